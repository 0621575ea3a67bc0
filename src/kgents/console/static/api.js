// The API client: credentials (sessionStorage only), fetch with the API's error body, and
// error display that shows the API's own words.

import { h } from "./dom.js";

const STORAGE_KEY = "kgents.console.credential";

/** The signed-in credential, {kind: "tenant" | "admin", secret}, or null. */
export function credential() {
  try {
    const stored = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "null");
    if (stored && (stored.kind === "tenant" || stored.kind === "admin") && stored.secret) {
      return stored;
    }
  } catch {
    // A damaged entry is the same as none.
  }
  return null;
}

export function saveCredential(kind, secret) {
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify({ kind, secret }));
}

export function clearCredential() {
  sessionStorage.removeItem(STORAGE_KEY);
}

/** An error as the API words it: `{"error": {"code", "message"}}` plus the HTTP status. */
export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

export const UNAUTHORIZED_EVENT = "kgents:unauthorized";

export function isAbort(error) {
  return error?.name === "AbortError" || error?.name === "TimeoutError";
}

/** The ApiError of a failed response, from its JSON error body when it has one. */
export async function errorOf(response) {
  let code = `http_${response.status}`;
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body?.error?.message) {
      code = body.error.code || code;
      message = body.error.message;
    } else if (typeof body?.detail === "string") {
      message = body.detail; // problem+json (metering endpoints)
      code = body.type || code;
    }
  } catch {
    // Not JSON: keep the status line.
  }
  return new ApiError(response.status, code, message, response.headers.get("Retry-After"));
}

/**
 * fetch() against this server's API. Throws ApiError for a failed status (and for a network
 * failure, status 0). A 401 with the signed-in credential tells the app to sign out.
 * `secret` overrides the stored credential (to check one before keeping it).
 */
export async function request(path, { method = "GET", body, headers, signal, secret } = {}) {
  const used = secret ?? credential()?.secret;
  const sendHeaders = new Headers(headers || {});
  if (used) sendHeaders.set("Authorization", `Bearer ${used}`);
  if (body !== undefined) sendHeaders.set("Content-Type", "application/json");
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: sendHeaders,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    });
  } catch (error) {
    if (isAbort(error)) throw error;
    throw new ApiError(0, "network_error", "The server could not be reached; check the connection.");
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && secret === undefined && used) {
      window.dispatchEvent(new CustomEvent(UNAUTHORIZED_EVENT, { detail: error }));
    }
    throw error;
  }
  return response;
}

/** request() and its JSON body (null for 204). */
export async function json(path, options) {
  const response = await request(path, options);
  return response.status === 204 ? null : response.json();
}

/** Show `error` in `container` (a role="alert" region) in the API's words; null clears it. */
export function showError(container, error) {
  if (!error) {
    container.replaceChildren();
    return;
  }
  if (isAbort(error)) return;
  const code = error instanceof ApiError ? error.code : "error";
  const message = error instanceof ApiError ? error.message : String(error.message || error);
  const status = error instanceof ApiError && error.status ? `${error.status} · ` : "";
  container.replaceChildren(
    h(
      "p",
      { class: "error", dataset: { code } },
      h("span", { class: "error-message" }, message),
      " ",
      h("span", { class: "error-code" }, `(${status}${code})`),
    ),
  );
}
