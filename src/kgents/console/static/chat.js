// Chat: the session list (create, open, delete) and a conversation whose replies stream in
// token by token, with mode and budget pickers, a cancel button and automatic resume.

import { ApiError, isAbort, json, request, showError } from "./api.js";
import { byId, formatDateTime, formatNumber, h } from "./dom.js";
import { streamReply } from "./sse.js";

const SESSIONS_PAGE = 100;
const MESSAGES_PAGE = 200;
const BUDGET_STORAGE_KEY = "kgents.console.budget";
const ENDED = new Set(["cancelled", "failed", "interrupted"]); // how a turn ends without completing

export function createChat({ navigate }) {
  const el = {
    list: byId("session-list"),
    summary: byId("sessions-summary"),
    sessionsError: byId("sessions-error"),
    createForm: byId("session-create"),
    newTitle: byId("new-title"),
    newMode: byId("new-mode"),
    refresh: byId("sessions-refresh"),
    title: byId("chat-title"),
    mode: byId("msg-mode"),
    budget: byId("msg-budget"),
    messages: byId("messages"),
    status: byId("stream-status"),
    error: byId("chat-error"),
    composer: byId("composer"),
    input: byId("composer-input"),
    send: byId("send"),
    cancel: byId("cancel"),
  };
  // `shown` counts show() calls: one that a newer call overtook while it waited gives up.
  const state = { sessions: [], current: null, streaming: null, loading: null, shown: 0, budgets: null };
  const budgetLabels = Object.fromEntries([...el.budget.options].map((o) => [o.value, o.textContent]));

  // ----- budgets: only those the plan allows; the choice is remembered in this browser -----

  async function loadBudgets() {
    try {
      const plan = await json("/v1/kgent/budgets");
      state.budgets = plan;
      el.budget.replaceChildren(
        ...plan.budgets.map((budget) => h("option", { value: budget }, budgetLabels[budget] || budget)),
      );
      const remembered = localStorage.getItem(BUDGET_STORAGE_KEY);
      el.budget.value = plan.budgets.includes(remembered) ? remembered : plan.default;
      el.budget.dataset.plan = plan.plan;
    } catch (error) {
      // An older server: keep every budget, "the plan's default" selected.
      if (!isAbort(error)) state.budgets = { budgets: [], default: "" };
    }
  }

  function rememberBudget() {
    if (el.budget.value) localStorage.setItem(BUDGET_STORAGE_KEY, el.budget.value);
  }

  // ----- sessions -----

  async function loadSessions() {
    try {
      const page = await json(`/v1/kgent/sessions?limit=${SESSIONS_PAGE}&offset=0`);
      state.sessions = page.sessions;
      showError(el.sessionsError, null);
      renderSessions(page.total);
    } catch (error) {
      showError(el.sessionsError, error);
    }
  }

  function renderSessions(total) {
    el.list.replaceChildren(
      ...state.sessions.map((session) => {
        const name = sessionName(session);
        const current = state.current?.id === session.id;
        return h(
          "li",
          { class: current ? "current" : null, dataset: { sessionId: session.id } },
          h(
            "a",
            {
              class: "session-open",
              href: `#/chat/${encodeURIComponent(session.id)}`,
              "aria-current": current ? "page" : null,
            },
            h("span", { class: "session-name" }, name),
            h(
              "span",
              { class: "session-meta" },
              `${session.mode} · ${formatNumber(session.message_count)} messages · ${formatDateTime(session.last_message_at || session.created_at)}`,
            ),
          ),
          h(
            "button",
            {
              type: "button",
              class: "session-delete secondary small",
              "aria-label": `Delete session ${name}`,
              onclick: () => deleteSession(session),
            },
            "Delete",
          ),
        );
      }),
    );
    el.summary.textContent = state.sessions.length
      ? total > state.sessions.length
        ? `Showing the ${state.sessions.length} most recent of ${formatNumber(total)} sessions.`
        : `${formatNumber(total)} session${total === 1 ? "" : "s"}.`
      : "No sessions yet: create one above.";
  }

  async function createSession(event) {
    event.preventDefault();
    const button = el.createForm.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const title = el.newTitle.value.trim();
      const session = await json("/v1/kgent/sessions", {
        method: "POST",
        body: { title: title || null, mode: el.newMode.value },
      });
      el.newTitle.value = "";
      showError(el.sessionsError, null);
      state.sessions.unshift(session);
      navigate(`#/chat/${encodeURIComponent(session.id)}`);
      await loadSessions();
    } catch (error) {
      showError(el.sessionsError, error);
    } finally {
      button.disabled = false;
    }
  }

  async function deleteSession(session) {
    if (!window.confirm(`Delete the session "${sessionName(session)}"?`)) return;
    try {
      await request(`/v1/kgent/sessions/${encodeURIComponent(session.id)}`, { method: "DELETE" });
      showError(el.sessionsError, null);
      if (state.current?.id === session.id) {
        stopStreaming();
        state.current = null;
        navigate("#/chat");
      }
      await loadSessions();
    } catch (error) {
      showError(el.sessionsError, error);
    }
  }

  // ----- the conversation -----

  async function openSession(sessionId) {
    stopStreaming();
    state.loading?.abort();
    const loading = new AbortController();
    state.loading = loading;
    showError(el.error, null);
    setStatus("");
    if (!sessionId) {
      state.current = null;
      el.title.textContent = "No session open";
      el.messages.replaceChildren(h("p", { class: "muted empty" }, "Create a session or open one from the list."));
      setComposer(false);
      renderSessions(state.sessions.length);
      return;
    }
    try {
      const base = `/v1/kgent/sessions/${encodeURIComponent(sessionId)}`;
      const session = await json(base, { signal: loading.signal });
      let page = await json(`${base}/messages?limit=${MESSAGES_PAGE}&offset=0`, { signal: loading.signal });
      if (page.total > page.messages.length) {
        const offset = page.total - MESSAGES_PAGE;
        page = await json(`${base}/messages?limit=${MESSAGES_PAGE}&offset=${offset}`, { signal: loading.signal });
      }
      state.current = session;
      el.title.textContent = sessionName(session);
      el.mode.value = session.mode;
      el.messages.replaceChildren(
        ...(page.total > page.messages.length
          ? [h("p", { class: "muted" }, `Earlier messages: ${formatNumber(page.total - page.messages.length)} not shown.`)]
          : []),
        ...historyViews(page.messages),
      );
      if (!page.messages.length) {
        el.messages.append(h("p", { class: "muted empty" }, "No messages yet. Say something to K-gent below."));
      }
      scrollToEnd(true);
      setComposer(true);
      renderSessions(state.sessions.length);
      el.input.focus();
    } catch (error) {
      if (isAbort(error)) return;
      state.current = null;
      setComposer(false);
      showError(el.error, error);
    }
  }

  // The history, each reply saying how its turn ended; a turn that ended before any text
  // has no reply, so its user message's status stands in for one.
  function historyViews(messages) {
    return messages.flatMap((message, i) => {
      const view = messageView(message.role, message.content, message);
      const next = messages[i + 1];
      const replied = next?.role === "assistant" && next.turn_id === message.turn_id;
      if (message.role !== "user" || replied || !ENDED.has(message.status)) return [view];
      return [view, endedView("", message.status, { code: message.error_code })];
    });
  }

  function messageView(role, text, details = {}) {
    const who = role === "user" ? "You" : "K-gent";
    const body = h("div", { class: "msg-text" }, text);
    const article = h(
      "article",
      { class: `msg msg-${role}`, "aria-label": `${who} said`, dataset: { role } },
      h("p", { class: "msg-role" }, who),
      body,
    );
    if (role === "assistant" && ENDED.has(details.status)) {
      article.dataset.ended = details.error_code || details.status;
      article.append(h("p", { class: "msg-meta error" }, endedText({ code: details.error_code }, details.status)));
    } else if (role === "assistant" && details.tokens_out !== undefined) {
      article.append(metaLine(details));
    }
    return article;
  }

  function endedView(text, status, error) {
    const article = messageView("assistant", text || "(no reply)");
    article.dataset.ended = error?.code || status;
    article.append(h("p", { class: "msg-meta error" }, endedText(error, status)));
    return article;
  }

  function metaLine(details) {
    const parts = [];
    if (details.tokens_in !== undefined) parts.push(`${formatNumber(details.tokens_in)} tokens in`);
    if (details.tokens_out !== undefined) parts.push(`${formatNumber(details.tokens_out)} out`);
    if (details.model) parts.push(details.model);
    return h("p", { class: "msg-meta" }, parts.join(" · "));
  }

  async function sendMessage(event) {
    event?.preventDefault();
    const text = el.input.value.trim();
    if (!text || !state.current || state.streaming) return;
    const session = state.current;
    const controller = new AbortController();
    state.streaming = controller;
    showError(el.error, null);
    setComposer(true);
    el.messages.querySelector(".empty")?.remove();

    const mine = messageView("user", text);
    const replyText = h("div", { class: "msg-text" });
    const reply = h(
      "article",
      { class: "msg msg-assistant streaming", "aria-label": "K-gent said", "aria-busy": "true", dataset: { role: "assistant" } },
      h("p", { class: "msg-role" }, "K-gent"),
      replyText,
    );
    el.messages.append(mine, reply);
    el.input.value = "";
    scrollToEnd(true);
    setStatus("Sending…");
    let streamed = "";

    try {
      await streamReply({
        sessionId: session.id,
        message: text,
        mode: el.mode.value,
        budget: el.budget.value || undefined,
        signal: controller.signal,
        on: {
          status(kind, attempt) {
            if (kind === "streaming") setStatus("K-gent is replying…");
            else if (kind === "reconnecting") {
              setStatus(attempt > 1 ? `Connection lost: reconnecting… (attempt ${attempt})` : "Connection lost: reconnecting…", "warn");
              reply.classList.add("reconnecting");
            } else if (kind === "resumed") {
              setStatus("Reconnected: resuming the reply…");
              reply.classList.remove("reconnecting");
            }
          },
          chunk(piece) {
            const follow = nearEnd();
            streamed += piece;
            replyText.textContent = streamed;
            if (follow) scrollToEnd();
          },
          end(type, data) {
            reply.setAttribute("aria-busy", "false");
            reply.classList.remove("streaming", "reconnecting");
            if (type === "complete") {
              if (data.text !== streamed) {
                // The stored reply is authoritative; this should never show.
                reply.dataset.repaired = "true";
                replyText.textContent = data.text;
              }
              reply.dataset.complete = "true";
              reply.append(metaLine(data));
              setStatus("");
            } else {
              reply.dataset.ended = data.error?.code || "error";
              if (!streamed) replyText.textContent = "(no reply)";
              reply.append(h("p", { class: "msg-meta error" }, endedText(data.error)));
              setStatus("");
            }
          },
        },
      });
    } catch (error) {
      reply.setAttribute("aria-busy", "false");
      reply.classList.remove("streaming", "reconnecting");
      if (isAbort(error)) {
        setStatus("");
      } else {
        if (!streamed) reply.remove();
        if (error instanceof ApiError && error.status !== 0 && !streamed) {
          // Refused before anything was stored: give the text back for another try.
          mine.remove();
          if (!el.input.value) el.input.value = text;
        } else if (!streamed) {
          mine.append(h("p", { class: "msg-meta error" }, "Not confirmed by the server: reopen the session to check."));
        }
        setStatus("");
        showError(el.error, error);
      }
    } finally {
      if (state.streaming === controller) state.streaming = null;
      // Aborted: another session was opened or the console signed out; nothing to refresh.
      if (!controller.signal.aborted) {
        setComposer(Boolean(state.current));
        loadSessions();
      }
    }
  }

  function endedText(error, status = "failed") {
    if (error?.code === "cancelled" || status === "cancelled") return "Cancelled: the reply stopped here.";
    if (error?.code === "interrupted" || status === "interrupted") {
      return "Interrupted: the server stopped while replying; the reply stopped here.";
    }
    const why = error?.message ? `: ${error.message}` : "";
    return `The reply failed${why} (${error?.code || "error"})`;
  }

  async function cancelReply() {
    if (!state.current || !state.streaming) return;
    el.cancel.disabled = true;
    setStatus("Cancelling…");
    try {
      await json(`/v1/kgent/sessions/${encodeURIComponent(state.current.id)}/cancel`, { method: "POST" });
    } catch (error) {
      showError(el.error, error);
      el.cancel.disabled = !state.streaming;
    }
  }

  function stopStreaming() {
    state.streaming?.abort();
    state.streaming = null;
  }

  function setComposer(enabled) {
    const busy = Boolean(state.streaming);
    el.input.disabled = !enabled;
    el.send.disabled = !enabled || busy;
    el.cancel.disabled = !busy;
    el.composer.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function setStatus(text, tone = "") {
    el.status.textContent = text;
    el.status.dataset.tone = tone;
  }

  function nearEnd() {
    const box = el.messages;
    return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }

  function scrollToEnd(force = false) {
    if (force || nearEnd()) el.messages.scrollTop = el.messages.scrollHeight;
  }

  el.createForm.addEventListener("submit", createSession);
  el.refresh.addEventListener("click", () => loadSessions());
  el.composer.addEventListener("submit", sendMessage);
  el.cancel.addEventListener("click", cancelReply);
  el.budget.addEventListener("change", rememberBudget);
  el.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) sendMessage(event);
  });

  return {
    /** Show the chat; `sessionId` from the URL (#/chat/<id>) or null. */
    async show(sessionId) {
      const ticket = ++state.shown;
      if (!state.budgets) await loadBudgets();
      if (!state.sessions.length) await loadSessions();
      if (ticket !== state.shown) return;
      if (sessionId !== (state.current?.id ?? null) || !state.current) await openSession(sessionId);
    },
    hide() {},
    reset() {
      state.shown += 1; // a show() still waiting gives up
      stopStreaming();
      state.loading?.abort();
      state.sessions = [];
      state.current = null;
      state.budgets = null;
      el.list.replaceChildren();
      el.messages.replaceChildren();
      el.summary.textContent = "";
      showError(el.error, null);
      showError(el.sessionsError, null);
      setStatus("");
    },
  };
}

function sessionName(session) {
  return session.title || `Untitled session (${formatDateTime(session.created_at)})`;
}
