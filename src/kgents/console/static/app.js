// The console's entry point: sign-in, navigation between the views (#/chat, #/usage,
// #/admin) and sign-out, including the automatic one when the API answers 401.

import { createAdmin } from "./admin.js";
import {
  ApiError,
  clearCredential,
  credential,
  request,
  saveCredential,
  showError,
  UNAUTHORIZED_EVENT,
} from "./api.js";
import { createChat } from "./chat.js";
import { byId } from "./dom.js";
import { createUsage } from "./usage.js";

const HOME = { tenant: "#/chat", admin: "#/admin" };
const VIEWS_OF = { tenant: ["chat", "usage"], admin: ["admin"] };

const el = {
  nav: byId("nav"),
  who: byId("who"),
  whoLabel: byId("who-label"),
  signOut: byId("sign-out"),
  main: byId("main"),
  signinForm: byId("signin-form"),
  secret: byId("signin-secret"),
  secretLabel: byId("signin-secret-label"),
  signinError: byId("signin-error"),
};
const views = {
  signin: byId("view-signin"),
  chat: byId("view-chat"),
  usage: byId("view-usage"),
  admin: byId("view-admin"),
};

function navigate(hash) {
  if (window.location.hash === hash) route();
  else window.location.hash = hash;
}

const modules = { chat: createChat({ navigate }), usage: createUsage(), admin: createAdmin() };
let shown = null;

function show(name) {
  for (const [key, section] of Object.entries(views)) section.hidden = key !== name;
  for (const link of el.nav.querySelectorAll("a")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (shown !== name) {
    modules[shown]?.hide();
    shown = name;
    el.main.focus({ preventScroll: true });
  }
  const title = { signin: "Sign in", chat: "Chat", usage: "Usage", admin: "Admin" }[name];
  document.title = `${title} · kgents console`;
}

function route() {
  const signedIn = credential();
  el.nav.hidden = !signedIn;
  el.who.hidden = !signedIn;
  if (!signedIn) {
    show("signin");
    el.secret.focus();
    return;
  }
  for (const link of el.nav.querySelectorAll("a")) link.hidden = link.dataset.for !== signedIn.kind;
  el.whoLabel.textContent =
    signedIn.kind === "admin" ? "Administrator" : `Tenant key ${signedIn.secret.slice(0, 12)}…`;
  const [, view, ...rest] = window.location.hash.replace(/^#\/?/, "#/").split("/");
  if (!VIEWS_OF[signedIn.kind].includes(view)) {
    navigate(HOME[signedIn.kind]);
    return;
  }
  show(view);
  if (view === "chat") modules.chat.show(rest.length ? decodeURIComponent(rest.join("/")) : null);
  else modules[view].show();
}

function signOut(reason) {
  clearCredential();
  for (const module of Object.values(modules)) module.reset();
  shown = null;
  el.secret.value = "";
  showError(el.signinError, reason || null);
  if (window.location.hash !== "#/") window.history.replaceState(null, "", "#/");
  route();
}

async function signIn(event) {
  event.preventDefault();
  const kind = new FormData(el.signinForm).get("kind") === "admin" ? "admin" : "tenant";
  const secret = el.secret.value.trim();
  if (!secret) {
    showError(el.signinError, new ApiError(0, "missing", kind === "admin" ? "Enter the admin token." : "Enter an API key."));
    el.secret.focus();
    return;
  }
  const button = el.signinForm.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    // Check the credential before keeping it: a tenant key lists sessions, the admin token tenants.
    await request(kind === "admin" ? "/v1/tenants?limit=1" : "/v1/kgent/sessions?limit=1", { secret });
    saveCredential(kind, secret);
    el.secret.value = "";
    showError(el.signinError, null);
    navigate(HOME[kind]);
  } catch (error) {
    showError(el.signinError, error);
    el.secret.focus();
  } finally {
    button.disabled = false;
  }
}

// The hash is the router's: the skip link moves the focus without touching it.
document.querySelector(".skip-link")?.addEventListener("click", (event) => {
  event.preventDefault();
  el.main.focus();
});
el.signinForm.addEventListener("submit", signIn);
el.signinForm.addEventListener("change", () => {
  const admin = new FormData(el.signinForm).get("kind") === "admin";
  el.secretLabel.textContent = admin ? "Admin token" : "API key";
});
el.signOut.addEventListener("click", () => signOut(null));
window.addEventListener(UNAUTHORIZED_EVENT, (event) => {
  const error = event.detail;
  signOut(new ApiError(error.status, error.code, `Signed out: ${error.message}`));
});
window.addEventListener("hashchange", route);
route();
