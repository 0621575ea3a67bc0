// Chat: the session list (create, open, delete) and a conversation whose replies stream in
// token by token, with mode and budget pickers, a cancel button and automatic resume.

import { ApiError, isAbort, json, request, showError } from "./api.js";
import { byId, formatDateTime, formatNumber, h } from "./dom.js";
import { followSession, streamReply } from "./sse.js";

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
  // `watch` follows the open session's events (another tab's turns, a reply still running
  // when the session was opened); `following` is the turn it shows as it streams; `seq` the
  // last stream sequence this tab saw.
  const state = {
    sessions: [],
    current: null,
    streaming: null,
    loading: null,
    shown: 0,
    budgets: null,
    watch: null,
    following: null,
    seq: null,
  };
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
      // Follow the session from here: a reply still running catches up from its first
      // event, then streams live, here as in every other tab that has the session open.
      const running = page.running_turn;
      state.seq = null;
      watch(session.id, running?.id ?? null, {
        after: running?.events_after ?? null,
        fromStart: Boolean(running) && running.events_after === null,
      });
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
    const dataset = details.turn_id ? { role, turnId: details.turn_id } : { role };
    const article = h(
      "article",
      { class: `msg msg-${role}`, "aria-label": `${who} said`, dataset },
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

  // A reply as it streams in: `append` its text, then `end` it as the turn ended.
  function replyView() {
    const text = h("div", { class: "msg-text" });
    const article = h(
      "article",
      { class: "msg msg-assistant streaming", "aria-label": "K-gent said", "aria-busy": "true", dataset: { role: "assistant" } },
      h("p", { class: "msg-role" }, "K-gent"),
      text,
    );
    let streamed = "";
    const settle = () => {
      article.setAttribute("aria-busy", "false");
      article.classList.remove("streaming", "reconnecting");
    };
    return {
      article,
      streamed: () => streamed,
      append(piece) {
        const follow = nearEnd();
        streamed += piece;
        text.textContent = streamed;
        if (follow) scrollToEnd();
      },
      reconnecting(on) {
        article.classList.toggle("reconnecting", on);
      },
      settle,
      end(type, data) {
        settle();
        if (type === "complete") {
          if (data.text !== streamed) {
            // The stored reply is authoritative; this should never show.
            article.dataset.repaired = "true";
            text.textContent = data.text;
          }
          article.dataset.complete = "true";
          article.append(metaLine(data));
        } else {
          article.dataset.ended = data.error?.code || "error";
          if (!streamed) text.textContent = "(no reply)";
          article.append(h("p", { class: "msg-meta error" }, endedText(data.error)));
        }
      },
    };
  }

  function showReconnecting(kind, attempt, view) {
    if (kind === "reconnecting") {
      setStatus(attempt > 1 ? `Connection lost: reconnecting… (attempt ${attempt})` : "Connection lost: reconnecting…", "warn");
      view.reconnecting(true);
    } else if (kind === "resumed") {
      setStatus("Reconnected: resuming the reply…");
      view.reconnecting(false);
    }
  }

  async function sendMessage(event) {
    event?.preventDefault();
    const text = el.input.value.trim();
    if (!text || !state.current || state.streaming || state.following) return;
    const session = state.current;
    const controller = new AbortController();
    stopWatching(); // this tab's own turn streams on the POST's connection
    state.streaming = controller;
    showError(el.error, null);
    setComposer(true);
    el.messages.querySelector(".empty")?.remove();

    const mine = messageView("user", text);
    const reply = replyView();
    el.messages.append(mine, reply.article);
    el.input.value = "";
    scrollToEnd(true);
    setStatus("Sending…");

    try {
      state.seq = await streamReply({
        sessionId: session.id,
        message: text,
        mode: el.mode.value,
        budget: el.budget.value || undefined,
        signal: controller.signal,
        on: {
          status(kind, attempt) {
            if (kind === "streaming") setStatus("K-gent is replying…");
            else showReconnecting(kind, attempt, reply);
          },
          userMessage(data) {
            mine.dataset.turnId = data.turn_id;
          },
          chunk(piece) {
            reply.append(piece);
          },
          end(type, data) {
            reply.end(type, data);
            setStatus("");
          },
        },
      });
    } catch (error) {
      reply.settle();
      if (isAbort(error)) {
        setStatus("");
      } else {
        const streamed = reply.streamed();
        if (!streamed) reply.article.remove();
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
        if (state.current?.id === session.id) watch(session.id, null, { after: state.seq });
        loadSessions();
      }
    }
  }

  // ----- following the open session -----

  function watch(sessionId, runningTurnId, position) {
    stopWatching();
    const controller = new AbortController();
    state.watch = controller;
    followSession({
      sessionId,
      ...position,
      signal: controller.signal,
      on: {
        event(type, data, id) {
          if (id !== null) state.seq = id;
          onSessionEvent(type, data, runningTurnId);
        },
        status(kind, attempt) {
          if (state.following) showReconnecting(kind, attempt, state.following.view);
          else if (kind === "resumed") setStatus("");
        },
      },
    }).catch((error) => {
      if (isAbort(error) || state.watch !== controller) return;
      state.watch = null;
      showError(el.error, error);
    });
  }

  function stopWatching() {
    state.watch?.abort();
    state.watch = null;
    if (state.following) {
      state.following.view.settle();
      state.following = null;
    }
  }

  // An event of the open session: a turn started elsewhere (or running when the session was
  // opened) is drawn and streamed as it arrives; turns already in the history are skipped.
  function onSessionEvent(type, data, runningTurnId) {
    if (type === "user_message") {
      if (state.following?.turnId === data.turn_id) return;
      const shown = [...el.messages.querySelectorAll("article.msg-user")].some(
        (article) => article.dataset.turnId === data.turn_id,
      );
      if (shown && data.turn_id !== runningTurnId) return; // a finished turn, replayed
      el.messages.querySelector(".empty")?.remove();
      if (!shown) el.messages.append(messageView("user", data.content, { turn_id: data.turn_id }));
      const view = replyView();
      el.messages.append(view.article);
      state.following = { turnId: data.turn_id, view, nextIndex: 0 };
      setStatus("K-gent is replying…");
      setComposer(true);
      scrollToEnd(true);
      return;
    }
    const following = state.following;
    if (!following || data.turn_id !== following.turnId) return;
    if (type === "chunk") {
      if (data.index < following.nextIndex) return; // a repeat
      following.nextIndex = data.index + 1;
      following.view.append(data.text);
    } else if (type === "complete" || type === "error") {
      following.view.end(type, data);
      state.following = null;
      setStatus("");
      setComposer(true);
      loadSessions();
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
    if (!state.current || !(state.streaming || state.following)) return;
    el.cancel.disabled = true;
    setStatus("Cancelling…");
    try {
      await json(`/v1/kgent/sessions/${encodeURIComponent(state.current.id)}/cancel`, { method: "POST" });
    } catch (error) {
      showError(el.error, error);
      el.cancel.disabled = !(state.streaming || state.following);
    }
  }

  function stopStreaming() {
    state.streaming?.abort();
    state.streaming = null;
    stopWatching();
  }

  function setComposer(enabled) {
    const busy = Boolean(state.streaming || state.following);
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
