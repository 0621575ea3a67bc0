// Server-Sent Events over fetch(): EventSource cannot POST or send an Authorization header.
//
// `SseParser` turns text into frames ({id, event, data}); `streamReply` posts a message, reads
// the reply's frames, and when the connection drops resumes through
// GET /v1/kgent/sessions/{id}/events with Last-Event-ID, skipping anything already seen.

import { ApiError, isAbort, request } from "./api.js";
import { sleep } from "./dom.js";

/** Incremental parser of the text/event-stream format (WHATWG HTML, "server-sent events"). */
export class SseParser {
  constructor() {
    this.buffer = "";
    this.afterCr = false; // the last line ended with "\r": a "\n" next belongs to it
    this.reset();
  }

  reset() {
    this.id = null;
    this.event = "";
    this.data = [];
  }

  /** Feed decoded text; returns the frames it completed. */
  feed(text) {
    this.buffer += text;
    if (this.afterCr && this.buffer.startsWith("\n")) this.buffer = this.buffer.slice(1);
    if (this.buffer) this.afterCr = false;
    const frames = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (!match) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      // A "\r" that ends the text so far may be the first half of a "\r\n".
      if (match[0] === "\r" && !this.buffer) this.afterCr = true;
      const frame = this.line(line);
      if (frame) frames.push(frame);
    }
    return frames;
  }

  line(line) {
    if (line === "") {
      const frame = this.data.length
        ? { id: this.id, event: this.event || "message", data: this.data.join("\n") }
        : null;
      this.reset();
      return frame;
    }
    if (line.startsWith(":")) return null; // comment: "connected", heartbeats
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && /^\d+$/.test(value)) this.id = Number(value);
    return null;
  }
}

// A connection silent this long is dead (the server sends a heartbeat every 15 s).
const STALL_MS = 35000;
const RETRY_DELAYS_MS = [400, 800, 1500, 3000, 5000];
const MAX_ATTEMPTS = 30;

/** Read `response`'s frames, calling `onFrame` for each; true once `onFrame` returns true. */
async function readFrames(response, onFrame, controller) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  let watchdog = setTimeout(() => controller.abort(new DOMException("stalled", "TimeoutError")), STALL_MS);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      clearTimeout(watchdog);
      watchdog = setTimeout(() => controller.abort(new DOMException("stalled", "TimeoutError")), STALL_MS);
      for (const frame of parser.feed(value)) {
        if (onFrame(frame)) return true;
      }
    }
  } finally {
    clearTimeout(watchdog);
    reader.cancel().catch(() => {});
  }
}

/** One connection: true when `onFrame` ended it, false when it dropped (resume then). */
async function followOnce(signal, open, onFrame) {
  const controller = new AbortController();
  const relay = () => controller.abort(signal.reason);
  signal.addEventListener("abort", relay, { once: true });
  try {
    const response = await open(controller.signal);
    return await readFrames(response, onFrame, controller);
  } catch (error) {
    if (signal.aborted) throw signal.reason;
    if (error instanceof StreamInterrupted || isAbort(error) || error instanceof TypeError) {
      return false; // dropped, stalled or the server's stream failed: resume
    }
    throw error;
  } finally {
    signal.removeEventListener("abort", relay);
  }
}

// Network failures and 5xx/429 are retried; anything else (401, 404) is final.
function retryable(error) {
  return error instanceof ApiError && (error.status === 0 || error.status >= 500 || error.status === 429);
}

function retryDelay(attempt) {
  return RETRY_DELAYS_MS[Math.min(attempt - 1, RETRY_DELAYS_MS.length - 1)];
}

/**
 * Follow a session's events (GET .../events) until `signal` aborts: those after the stream
 * sequence `after`, all of them with `fromStart`, or else only new ones; after a drop, from
 * the last one seen. `on.event(type, data, id)` gets each event once, in order;
 * `on.status(kind, attempt)` gets "reconnecting" and "resumed". Throws ApiError when the
 * API refuses (401, 404).
 */
export async function followSession({ sessionId, after = null, fromStart = false, signal, on }) {
  const base = `/v1/kgent/sessions/${encodeURIComponent(sessionId)}`;
  let lastId = after;
  const onFrame = (frame) => {
    if (frame.id !== null) {
      if (lastId !== null && frame.id <= lastId) return false; // seen already
      lastId = frame.id;
    }
    let data;
    try {
      data = JSON.parse(frame.data);
    } catch {
      return false;
    }
    if (frame.event === "error" && data.turn_id === undefined) {
      throw new StreamInterrupted(data.error?.message || "the event stream failed");
    }
    on.event(frame.event, data, frame.id);
    return false;
  };
  const open = (reconnected) => async (connectionSignal) => {
    const headers = { Accept: "text/event-stream" };
    if (lastId !== null) headers["Last-Event-ID"] = String(lastId);
    const query = lastId === null && fromStart ? "?from=start" : "";
    const response = await request(`${base}/events${query}`, { headers, signal: connectionSignal });
    if (reconnected) on.status?.("resumed");
    return response;
  };
  for (let attempt = 0; ; ) {
    const seenBefore = lastId;
    try {
      await followOnce(signal, open(attempt > 0), onFrame);
    } catch (error) {
      if (signal.aborted || !retryable(error)) throw error;
    }
    attempt = lastId !== seenBefore ? 1 : attempt + 1; // progress: start counting again
    on.status?.("reconnecting", attempt);
    await sleep(retryDelay(attempt), signal);
  }
}

/**
 * Send a message and stream its reply; returns the stream sequence of the last event seen.
 *
 * `on.status(state)` gets "streaming", "reconnecting" (with the attempt number) and "resumed";
 * `on.userMessage(data)`, `on.chunk(text, data)` and finally `on.end(type, data)` with type
 * "complete" or "error" (the turn's own end: cancelled, provider failure...). Throws ApiError
 * when the API refuses the message (402, 403, 409, 429...) or the stream cannot be resumed.
 */
export async function streamReply({ sessionId, message, mode, budget, signal, on }) {
  const turn = { lastId: null, turnId: null, nextIndex: 0 };
  const base = `/v1/kgent/sessions/${encodeURIComponent(sessionId)}`;

  // The frames of one connection; true once the turn ended; "interrupted" when the server
  // said its stream failed (no turn_id: the event stream is down), which means: resume later.
  const onFrame = (frame) => {
    if (frame.id !== null) {
      if (turn.lastId !== null && frame.id <= turn.lastId) return false; // seen already
      turn.lastId = frame.id;
    }
    let data;
    try {
      data = JSON.parse(frame.data);
    } catch {
      return false;
    }
    if (frame.event === "user_message") {
      if (turn.turnId === null) {
        turn.turnId = data.turn_id;
        on.userMessage?.(data);
      }
      return false;
    }
    if (frame.event === "error" && data.turn_id === undefined) {
      throw new StreamInterrupted(data.error?.message || "the event stream failed");
    }
    if (data.turn_id !== turn.turnId) return false; // another turn of the session
    if (frame.event === "chunk") {
      if (data.index < turn.nextIndex) return false; // a repeat
      turn.nextIndex = data.index + 1;
      on.chunk(data.text, data);
      return false;
    }
    if (frame.event === "complete" || frame.event === "error") {
      on.end(frame.event, data);
      return true;
    }
    return false;
  };

  const follow = (open) => followOnce(signal, open, onFrame);

  // The POST itself: a refusal (4xx) is thrown to the caller; a dropped stream is resumed.
  const post = (connectionSignal) =>
    request(`${base}/messages`, {
      method: "POST",
      body: { message, mode, budget, stream: true },
      headers: { Accept: "text/event-stream" },
      signal: connectionSignal,
    });
  let posted = false;
  const ended = await follow(async (connectionSignal) => {
    const response = await post(connectionSignal);
    posted = true;
    on.status("streaming");
    return response;
  }).catch((error) => {
    if (!posted && error instanceof ApiError && error.status === 0) {
      // Never reached the server, or lost it before the answer: whether the turn started is
      // unknown, so do not guess.
      throw new ApiError(0, "network_error", "The message could not be sent: the server could not be reached.");
    }
    throw error;
  });
  if (ended) return turn.lastId;

  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt += 1) {
    on.status("reconnecting", attempt);
    await sleep(retryDelay(attempt), signal);
    if (turn.lastId === null) {
      throw new ApiError(
        0,
        "stream_lost",
        "The connection dropped before the reply started; reopen the session to see it.",
      );
    }
    const seenBefore = turn.lastId;
    try {
      const done = await follow(async (connectionSignal) => {
        const response = await request(`${base}/events`, {
          headers: { "Last-Event-ID": String(turn.lastId), Accept: "text/event-stream" },
          signal: connectionSignal,
        });
        on.status("resumed");
        return response;
      });
      if (done) return turn.lastId;
    } catch (error) {
      if (!retryable(error)) throw error;
    }
    if (turn.lastId !== seenBefore) attempt = 0; // it made progress: start counting again
  }
  throw new ApiError(
    0,
    "stream_lost",
    "Lost the connection to the server. The reply is saved: reopen the session to see it.",
  );
}

class StreamInterrupted extends Error {}
