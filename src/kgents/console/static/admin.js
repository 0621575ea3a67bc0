// Admin: tenants (create, change plan, suspend), their keys (create, shown once; revoke) and a
// live view of metering health (outbox backlog, consumer lag, dead letters).

import { json, showError } from "./api.js";
import { sparkline } from "./charts.js";
import { byId, every, formatDate, formatDateTime, formatNumber, h } from "./dom.js";

const TENANTS_PAGE = 20;
const HEALTH_MS = 2000;
const HISTORY = 30;
const DEFAULT_PLANS = ["free", "pro", "enterprise", "custom"];
const timeFormat = new Intl.DateTimeFormat("en", { timeStyle: "medium" });

export function createAdmin() {
  const el = {
    healthError: byId("health-error"),
    healthUpdated: byId("health-updated"),
    outbox: byId("health-outbox"),
    lag: byId("health-lag"),
    dead: byId("health-dead"),
    sparkOutbox: byId("spark-outbox"),
    sparkLag: byId("spark-lag"),
    sparkDead: byId("spark-dead"),
    tenantForm: byId("tenant-create"),
    tenantName: byId("tenant-name"),
    tenantPlan: byId("tenant-plan"),
    planOptions: byId("plan-options"),
    tenantsError: byId("tenants-error"),
    tenantsStatus: byId("tenants-status"),
    tenantRows: byId("tenant-table").querySelector("tbody"),
    tenantsRefresh: byId("tenants-refresh"),
    prev: byId("tenants-prev"),
    next: byId("tenants-next"),
    page: byId("tenants-page"),
    keysPanel: byId("keys-panel"),
    keysTitle: byId("keys-title"),
    keysClose: byId("keys-close"),
    keyForm: byId("key-create"),
    keyName: byId("key-name"),
    keyExpires: byId("key-expires"),
    keyOnce: byId("key-once"),
    keyOnceValue: byId("key-once-value"),
    keyCopy: byId("key-copy"),
    keysError: byId("keys-error"),
    keysStatus: byId("keys-status"),
    keyRows: byId("key-table").querySelector("tbody"),
  };
  const state = { offset: 0, total: 0, tenants: [], plans: new Set(DEFAULT_PLANS), tenant: null };
  const history = { outbox: [], lag: [], dead: [] };
  let stopHealth = null;

  // ----- metering health -----

  function showCounter(element, spark, series, value, label) {
    const known = value !== null && value !== undefined;
    element.textContent = known ? formatNumber(value) : "not available";
    element.dataset.value = known ? String(value) : "";
    element.title = known ? "" : "This server does not report it (yet).";
    if (!known) {
      series.length = 0;
      spark.replaceChildren();
      return;
    }
    series.push(value);
    if (series.length > HISTORY) series.shift();
    sparkline(spark, series, `${label}, last ${series.length} readings`);
  }

  async function loadHealth() {
    try {
      const health = await json("/v1/admin/metering");
      showError(el.healthError, null);
      showCounter(el.outbox, el.sparkOutbox, history.outbox, health.outbox_backlog, "Outbox backlog");
      showCounter(el.lag, el.sparkLag, history.lag, health.consumer_lag, "Consumer lag");
      showCounter(el.dead, el.sparkDead, history.dead, health.dead_letters, "Dead letters");
      el.dead.classList.toggle("warn", Boolean(health.dead_letters));
      el.healthUpdated.textContent = `Live, updated ${timeFormat.format(new Date())}`;
    } catch (error) {
      showError(el.healthError, error);
    }
  }

  // ----- tenants -----

  function renderPlanOptions() {
    el.planOptions.replaceChildren(...[...state.plans].sort().map((plan) => h("option", { value: plan })));
  }

  async function loadTenants() {
    try {
      const page = await json(`/v1/tenants?limit=${TENANTS_PAGE}&offset=${state.offset}`);
      state.tenants = page.tenants;
      state.total = page.total;
      for (const tenant of page.tenants) state.plans.add(tenant.plan);
      renderPlanOptions();
      showError(el.tenantsError, null);
      renderTenants();
    } catch (error) {
      showError(el.tenantsError, error);
    }
  }

  function tenantRow(tenant) {
    const planSelect = h(
      "select",
      {
        "aria-label": `Plan of ${tenant.name}`,
        onchange: (event) => {
          const plan = event.target.value;
          updateTenant(tenant, { plan }, `Plan of ${tenant.name} changed to ${plan}.`);
        },
      },
      [...state.plans].sort().map((plan) => h("option", { value: plan, selected: plan === tenant.plan }, plan)),
    );
    const suspended = tenant.status === "suspended";
    const toggle = h(
      "button",
      {
        type: "button",
        class: "secondary small",
        "aria-label": `${suspended ? "Reactivate" : "Suspend"} ${tenant.name}`,
        onclick: () =>
          updateTenant(
            tenant,
            { status: suspended ? "active" : "suspended" },
            `${tenant.name} is ${suspended ? "active again" : "suspended"}.`,
          ),
      },
      suspended ? "Reactivate" : "Suspend",
    );
    const keys = h(
      "button",
      { type: "button", class: "small", "aria-label": `Keys of ${tenant.name}`, onclick: () => openKeys(tenant) },
      "Keys",
    );
    const name = h("div", {}, h("span", { class: "tenant-name" }, tenant.name), h("br"), h("code", { class: "muted" }, tenant.id));
    return h(
      "tr",
      { dataset: { tenantId: tenant.id }, class: state.tenant?.id === tenant.id ? "selected" : null },
      h("td", { "data-label": "Name" }, name),
      h("td", { "data-label": "Plan" }, planSelect),
      h("td", { "data-label": "Status" }, h("span", { class: `badge ${tenant.status}` }, tenant.status)),
      h("td", { "data-label": "Created" }, formatDate(tenant.created_at)),
      h("td", { "data-label": "Actions" }, h("div", { class: "actions" }, toggle, keys)),
    );
  }

  function renderTenants() {
    el.tenantRows.replaceChildren(...state.tenants.map(tenantRow));
    if (!state.tenants.length) {
      el.tenantRows.append(h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No tenants yet.")));
    }
    const last = Math.min(state.offset + state.tenants.length, state.total);
    el.page.textContent = state.total ? `${state.offset + 1}–${last} of ${formatNumber(state.total)}` : "";
    el.prev.disabled = state.offset === 0;
    el.next.disabled = last >= state.total;
  }

  async function createTenant(event) {
    event.preventDefault();
    const name = el.tenantName.value.trim();
    const plan = el.tenantPlan.value.trim();
    try {
      const tenant = await json("/v1/tenants", { method: "POST", body: { name, plan } });
      el.tenantName.value = "";
      showError(el.tenantsError, null);
      el.tenantsStatus.textContent = `Tenant ${tenant.name} created on plan ${tenant.plan}.`;
      state.offset = Math.max(0, Math.floor((state.total) / TENANTS_PAGE) * TENANTS_PAGE);
      await loadTenants();
      openKeys(tenant);
    } catch (error) {
      showError(el.tenantsError, error);
    }
  }

  async function updateTenant(tenant, changes, done) {
    try {
      await json(`/v1/tenants/${encodeURIComponent(tenant.id)}`, { method: "PATCH", body: changes });
      showError(el.tenantsError, null);
      el.tenantsStatus.textContent = done;
    } catch (error) {
      showError(el.tenantsError, error);
    }
    await loadTenants();
  }

  // ----- keys -----

  async function openKeys(tenant) {
    state.tenant = tenant;
    el.keysPanel.hidden = false;
    el.keysTitle.textContent = `Keys of ${tenant.name}`;
    el.keyOnce.hidden = true;
    el.keyOnceValue.textContent = "";
    el.keysStatus.textContent = "";
    showError(el.keysError, null);
    renderTenants();
    await loadKeys();
    el.keysPanel.scrollIntoView({ block: "nearest" });
    el.keyName.focus();
  }

  async function loadKeys() {
    const tenant = state.tenant;
    if (!tenant) return;
    try {
      const { keys } = await json(`/v1/tenants/${encodeURIComponent(tenant.id)}/keys`);
      if (state.tenant !== tenant) return;
      showError(el.keysError, null);
      el.keyRows.replaceChildren(...keys.map((key) => keyRow(tenant, key)));
      if (!keys.length) el.keyRows.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No keys yet.")));
    } catch (error) {
      showError(el.keysError, error);
    }
  }

  function keyRow(tenant, key) {
    const expired = key.expires_at && new Date(key.expires_at) <= new Date();
    const status = key.revoked_at ? "revoked" : expired ? "expired" : "active";
    return h(
      "tr",
      { dataset: { keyId: key.id } },
      h("td", { "data-label": "Name" }, key.name),
      h("td", { "data-label": "Prefix" }, h("code", {}, `${key.prefix}…`)),
      h("td", { "data-label": "Created" }, formatDateTime(key.created_at)),
      h("td", { "data-label": "Last used" }, formatDateTime(key.last_used_at)),
      h("td", { "data-label": "Expires" }, key.expires_at ? formatDate(key.expires_at) : "never"),
      h("td", { "data-label": "Status" }, h("span", { class: `badge ${status}` }, status)),
      h(
        "td",
        { "data-label": "Actions" },
        key.revoked_at
          ? h("span", { class: "muted" }, `revoked ${formatDateTime(key.revoked_at)}`)
          : h(
              "button",
              {
                type: "button",
                class: "danger small",
                "aria-label": `Revoke key ${key.name} (${key.prefix})`,
                onclick: () => revokeKey(tenant, key),
              },
              "Revoke",
            ),
      ),
    );
  }

  async function createKey(event) {
    event.preventDefault();
    const tenant = state.tenant;
    if (!tenant) return;
    const body = { name: el.keyName.value.trim() || "default" };
    if (el.keyExpires.value) body.expires_at = `${el.keyExpires.value}T00:00:00Z`;
    try {
      const created = await json(`/v1/tenants/${encodeURIComponent(tenant.id)}/keys`, { method: "POST", body });
      showError(el.keysError, null);
      el.keyOnceValue.textContent = created.key;
      el.keyOnce.hidden = false;
      el.keysStatus.textContent = `Key ${created.name} created for ${tenant.name}.`;
      el.keyCopy.focus();
      await loadKeys();
    } catch (error) {
      showError(el.keysError, error);
    }
  }

  async function revokeKey(tenant, key) {
    if (!window.confirm(`Revoke the key ${key.name} (${key.prefix}…) of ${tenant.name}? It stops working at once.`)) return;
    try {
      await json(`/v1/tenants/${encodeURIComponent(tenant.id)}/keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
      showError(el.keysError, null);
      el.keysStatus.textContent = `Key ${key.name} (${key.prefix}…) revoked.`;
      if (el.keyOnceValue.textContent.startsWith(key.prefix)) {
        el.keyOnce.hidden = true;
        el.keyOnceValue.textContent = "";
      }
      await loadKeys();
    } catch (error) {
      showError(el.keysError, error);
    }
  }

  async function copyKey() {
    try {
      await navigator.clipboard.writeText(el.keyOnceValue.textContent);
      el.keysStatus.textContent = "Key copied to the clipboard.";
    } catch {
      // No clipboard permission: select the text so Ctrl+C copies it.
      const range = document.createRange();
      range.selectNodeContents(el.keyOnceValue);
      window.getSelection()?.removeAllRanges();
      window.getSelection()?.addRange(range);
      el.keysStatus.textContent = "Select and copy the key (Ctrl+C).";
    }
  }

  function closeKeys() {
    state.tenant = null;
    el.keysPanel.hidden = true;
    el.keyOnceValue.textContent = "";
    renderTenants();
  }

  el.tenantForm.addEventListener("submit", createTenant);
  el.tenantsRefresh.addEventListener("click", () => loadTenants());
  el.prev.addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - TENANTS_PAGE);
    loadTenants();
  });
  el.next.addEventListener("click", () => {
    state.offset += TENANTS_PAGE;
    loadTenants();
  });
  el.keyForm.addEventListener("submit", createKey);
  el.keyCopy.addEventListener("click", copyKey);
  el.keysClose.addEventListener("click", closeKeys);
  renderPlanOptions();

  return {
    show() {
      loadTenants();
      stopHealth?.();
      stopHealth = every(HEALTH_MS, loadHealth);
    },
    hide() {
      stopHealth?.();
      stopHealth = null;
    },
    reset() {
      this.hide();
      closeKeys();
      state.tenants = [];
      state.offset = 0;
      el.tenantRows.replaceChildren();
      for (const series of Object.values(history)) series.length = 0;
    },
  };
}
