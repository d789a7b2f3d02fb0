// Operator dashboard: talks to the admin API (DESIGN §6.1) with the bearer token from POST /auth/login.
// Rules kept throughout: the token lives in sessionStorage only; every value from the API reaches the page
// as text (textContent / text nodes, never innerHTML); amounts are shown as the decimal strings the API
// returns, never parsed into numbers.
"use strict";

(function () {
  const REFRESH_MS = 5000;
  const STATUSES = [
    "PENDING", "AWAITING_APPROVAL", "WAITING_FOR_FUNDS", "PROCESSING", "BROADCAST", "CONFIRMING",
    "NEEDS_ATTENTION", "CONFIRMED", "REJECTED", "CANCELLED", "FAILED",
  ];
  const TERMINAL = ["CONFIRMED", "REJECTED", "CANCELLED", "FAILED"];
  const ROLE_RANK = { VIEWER: 0, OPERATOR: 1, APPROVER: 2, ADMIN: 3 };
  const KEY = "we.admin.session";
  const NOTICE = "we.admin.notice"; // the logout message, shown on the fresh page

  const $ = (id) => document.getElementById(id);

  // ---- DOM helpers: text only ------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : String(c)); // strings become text nodes
    }
    return node;
  }

  const text = (v) => (v === null || v === undefined || v === "" ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v));
  const short = (v, n = 10) => (typeof v === "string" && v.length > 2 * n + 1 ? v.slice(0, n + 2) + "…" + v.slice(-n) : text(v));
  const cell = (v, attrs) => el("td", attrs, text(v));
  const errorText = (e) => (e && typeof e === "object" ? `${text(e.code)}: ${text(e.message)}` : text(e));

  function fillTable(table, rows) {
    table.tBodies[0].replaceChildren(...rows);
  }

  function showError(id, err) {
    const p = $(id);
    if (!err) {
      p.hidden = true;
      p.textContent = "";
      return;
    }
    p.hidden = false;
    p.textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err.message || err);
  }

  let flashTimer = null;
  function flash(message, kind) {
    const p = $("flash");
    p.textContent = message;
    p.className = kind === "error" ? "flash error" : "flash ok";
    p.hidden = false;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { p.hidden = true; }, 15000);
  }

  // ---- session and API -------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function loadSession() {
    try {
      const s = JSON.parse(sessionStorage.getItem(KEY) || "null");
      if (s && typeof s.token === "string" && s.expiresAt > Date.now()) return s;
    } catch (_) { /* a damaged entry is a logged-out session */ }
    sessionStorage.removeItem(KEY);
    return null;
  }

  let session = loadSession();
  let expiryTimer = null;

  const canOperate = () => session && (ROLE_RANK[session.role] ?? -1) >= ROLE_RANK.OPERATOR;

  async function api(method, path, body) {
    if (!session) throw new ApiError(401, "UNAUTHORIZED", "not logged in");
    const headers = { Accept: "application/json", Authorization: `Bearer ${session.token}` };
    const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(path, init);
    } catch (_) {
      throw new ApiError(0, "NETWORK_ERROR", "the engine did not answer");
    }
    let data = null;
    try { data = await r.json(); } catch (_) { /* not JSON */ }
    if (r.status === 401) {
      logout("Your session has ended; log in again.");
      throw new ApiError(401, "UNAUTHORIZED", "session ended");
    }
    if (!r.ok) {
      const e = (data && data.error) || {};
      throw new ApiError(r.status, e.code || `HTTP_${r.status}`, e.message || r.statusText || "request failed");
    }
    return data;
  }

  async function login(ev) {
    ev.preventDefault();
    const error = $("login-error");
    error.textContent = "";
    $("login-submit").disabled = true;
    try {
      const r = await fetch("/auth/login", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ username: $("login-username").value, password: $("login-password").value }),
        cache: "no-store",
        credentials: "omit",
      });
      let data = null;
      try { data = await r.json(); } catch (_) { /* not JSON */ }
      if (!r.ok) {
        error.textContent = (data && data.error && data.error.message) || `login failed (${r.status})`;
        return;
      }
      session = {
        token: data.access_token,
        role: data.role,
        username: $("login-username").value,
        expiresAt: Date.now() + 1000 * (Number(data.expires_in) || 0),
      };
      sessionStorage.setItem(KEY, JSON.stringify(session));
      $("login-password").value = "";
      start();
    } catch (_) {
      error.textContent = "the engine did not answer";
    } finally {
      $("login-submit").disabled = false;
    }
  }

  function logout(message) {
    // A fresh page: nothing the previous session saw stays in the DOM for whoever logs in next.
    session = null;
    clearTimeout(expiryTimer);
    stopPolling();
    sessionStorage.removeItem(KEY);
    sessionStorage.setItem(NOTICE, message || "");
    $("app").hidden = true;
    location.replace(location.pathname);
  }

  // ---- operator dialog (reason prompt) ---------------------------------------------------------

  function askReason(title, description, { required }) {
    const dialog = $("reason-dialog");
    const input = $("reason-input");
    $("reason-title").textContent = title;
    $("reason-text").textContent = description;
    input.value = "";
    input.required = required;
    input.placeholder = required ? "required" : "optional";
    return new Promise((resolve) => {
      const form = $("reason-form");
      const done = (value) => {
        form.removeEventListener("submit", onSubmit);
        $("reason-cancel").removeEventListener("click", onCancel);
        dialog.removeEventListener("cancel", onCancel);
        if (dialog.open) dialog.close();
        resolve(value);
      };
      const onSubmit = (e) => {
        e.preventDefault();
        const value = input.value.trim();
        if (required && !value) {
          input.reportValidity();
          return;
        }
        done(value);
      };
      const onCancel = (e) => { e.preventDefault(); done(null); };
      form.addEventListener("submit", onSubmit);
      $("reason-cancel").addEventListener("click", onCancel);
      dialog.addEventListener("cancel", onCancel);
      dialog.showModal();
      input.focus();
    });
  }

  async function withdrawalAction(id, action) {
    const reason = await askReason(
      action === "retry" ? "Retry withdrawal" : "Cancel withdrawal",
      action === "retry"
        ? `Run the failed step of ${id} again (fix its cause first).`
        : `Cancel ${id}; a signed transaction is replaced by a 0-value self-transfer at its nonce.`,
      { required: action === "cancel" },
    );
    if (reason === null) return;
    try {
      const r = await api("POST", `/admin/transactions/${encodeURIComponent(id)}/${action}`, reason ? { reason } : {});
      flash(`${action} of ${id} accepted; status ${r.withdrawal ? r.withdrawal.status : "?"}`, "ok");
    } catch (e) {
      flash(`${action} of ${id} refused: ${e.code}: ${e.message}`, "error");
    }
    refreshAll();
    if (detailId === id) loadDetail(id);
  }

  async function pauseAction(kind, scope) {
    const what = scope.network ? `network ${scope.network}` : scope.hot_wallet ? `hot wallet ${scope.hot_wallet}` : "everything";
    const reason = await askReason(
      kind === "pause" ? `Pause ${what}` : `Resume ${what}`,
      kind === "pause"
        ? `Nothing new is signed or broadcast on ${what} until it is resumed; requests are still accepted.`
        : `Signing and broadcasting on ${what} start again.`,
      { required: true },
    );
    if (reason === null) return;
    try {
      await api("POST", `/admin/queues/${kind}`, { ...scope, reason });
      flash(`${what} ${kind === "pause" ? "paused" : "resumed"}`, "ok");
    } catch (e) {
      flash(`${kind} of ${what} refused: ${e.code}: ${e.message}`, "error");
    }
    refreshAll();
  }

  function opButton(label, onClick, cls) {
    const b = el("button", { type: "button", class: cls, on: { click: onClick } }, label);
    if (!canOperate()) {
      b.disabled = true;
      b.title = "requires role OPERATOR";
    }
    return b;
  }

  // ---- live counts -----------------------------------------------------------------------------

  let networkNames = [];

  function setNetworks(names) {
    if (names.join() === networkNames.join()) return;
    networkNames = names;
    const select = $("f-network");
    const current = select.value;
    select.replaceChildren(el("option", { value: "" }, "any"), ...names.map((n) => el("option", { value: n }, n)));
    select.value = names.includes(current) ? current : "";
  }

  async function refreshCounts() {
    try {
      const data = await api("GET", "/admin/stats/network");
      const networks = data.networks || {};
      const names = Object.keys(networks).sort();
      setNetworks(names);
      const table = $("counts-table");
      table.tHead.replaceChildren(el("tr", {}, el("th", {}, "Status"), names.map((n) => el("th", {}, n)), el("th", {}, "All")));
      const statuses = [...STATUSES];
      for (const n of names) for (const s of Object.keys(networks[n].by_status || {})) if (!statuses.includes(s)) statuses.push(s);
      const rows = statuses.map((status) => {
        let total = 0;
        const cells = names.map((n) => {
          const count = Number((networks[n].by_status || {})[status] || 0);
          total += count;
          return el("td", { class: count ? "num" : "num zero", dataset: { network: n, status } }, String(count));
        });
        return el("tr", { class: status === "NEEDS_ATTENTION" && total ? "warn" : null },
          el("th", {}, status), cells, el("td", { class: "num", dataset: { network: "*", status } }, String(total)));
      });
      rows.push(el("tr", { class: "meta" }, el("th", {}, "Head block"), names.map((n) => cell(networks[n].head, { class: "num" })), el("td")));
      rows.push(el("tr", { class: "meta" }, el("th", {}, "Paused"),
        names.map((n) => {
          const wallets = networks[n].paused_hot_wallets || [];
          return el("td", { class: networks[n].paused ? "bad" : wallets.length ? "warn-text" : "good", dataset: { network: n, paused: "" } },
            networks[n].paused ? "paused" : wallets.length ? `${wallets.length} hot wallet(s) paused` : "running");
        }), el("td")));
      rows.push(el("tr", { class: "meta" }, el("th", {}, "Volume 24 h"),
        names.map((n) => el("td", {}, Object.entries(networks[n].volume_24h || {}).map(([a, v]) => el("div", {}, `${v} ${a}`)))), el("td")));
      fillTable(table, rows);
      showError("overview-error", null);
    } catch (e) {
      showError("overview-error", e);
    }
  }

  // ---- alerts --------------------------------------------------------------------------------

  async function refreshAlerts() {
    try {
      const data = await api("GET", "/admin/alerts?state=FIRING&limit=50");
      const items = data.items || [];
      $("alerts-total").textContent = `${text(data.total ?? items.length)} firing`;
      fillTable($("alerts-table"), items.length ? items.map((a) => el("tr", { class: a.severity === "critical" ? "warn" : null, dataset: { kind: a.kind } },
        cell(a.fired_at), el("td", { class: a.severity === "info" ? null : "bad" }, text(a.severity)), cell(a.kind), cell(a.summary)))
        : [el("tr", {}, el("td", { colspan: 4, class: "muted" }, "none"))]);
      showError("alerts-error", null);
    } catch (e) {
      showError("alerts-error", e);
    }
  }

  // ---- pauses and queues -----------------------------------------------------------------------

  // /admin/queues lists the active pauses: {network|null, hot_wallet|null, reason, paused_by, paused_at}.
  const pauseList = (data) => data.paused || [];

  async function refreshQueues() {
    try {
      const data = await api("GET", "/admin/queues");
      const pauses = pauseList(data);
      const global = pauses.find((p) => !p.network && !p.hot_wallet);
      const globalState = $("pause-global-state");
      globalState.textContent = global ? `paused: ${text(global.reason)} (${text(global.paused_by)}, ${text(global.paused_at)})` : "running";
      globalState.className = global ? "bad" : "good";
      $("pause-all").disabled = !canOperate() || Boolean(global);
      $("resume-all").disabled = !canOperate() || !global;
      const names = networkNames.length ? networkNames : [...new Set(pauses.map((p) => p.network).filter(Boolean))].sort();
      fillTable($("pause-table"), names.map((n) => {
        const p = pauses.find((x) => x.network === n && !x.hot_wallet);
        return el("tr", { dataset: { network: n }, class: p ? "warn" : null },
          el("th", {}, n),
          el("td", { class: p ? "bad" : "good", dataset: { state: "" } }, p ? "paused" : global ? "paused (everything)" : "running"),
          cell(p && p.reason), cell(p && p.paused_by), cell(p && p.paused_at),
          el("td", {}, p
            ? opButton("Resume", () => pauseAction("resume", { network: n }), "resume")
            : opButton("Pause", () => pauseAction("pause", { network: n }), "danger pause")));
      }));
      const others = pauses.filter((p) => p.hot_wallet);
      fillTable($("pause-other-table"), others.length ? others.map((p) => el("tr", {},
        cell(`${p.network ? p.network + " " : ""}hot wallet ${p.hot_wallet}`), cell(p.reason), cell(p.paused_by), cell(p.paused_at),
        el("td", {}, opButton("Resume", () => pauseAction("resume", { network: p.network || undefined, hot_wallet: p.hot_wallet }), "resume"))))
        : [el("tr", {}, el("td", { colspan: 5, class: "muted" }, "none"))]);
      renderTaskQueues(data);
      showError("pauses-error", null);
    } catch (e) {
      showError("pauses-error", e);
    }
  }

  function renderTaskQueues(data) {
    const list = data.task_queues || [];
    const table = $("queues-table");
    table.tHead.replaceChildren(el("tr", {}, ["Task queue", "Type", "Pollers", "Backlog", "Backlog age (s)", "State"].map((h) => el("th", {}, h))));
    fillTable(table, list.length ? list.map((q) => {
      const pollers = q.pollers || [];
      return el("tr", {},
        el("th", {}, text(q.name)), cell(q.type),
        el("td", { class: q.error || pollers.length ? "num" : "num bad", title: pollers.map((p) => p.identity).join("\n") }, q.error ? "—" : String(pollers.length)),
        cell(q.backlog, { class: "num" }), cell(q.backlog_age_s, { class: "num" }),
        el("td", { class: q.error ? "bad" : pollers.length ? "good" : "bad" }, q.error ? q.error : pollers.length ? "polled" : "no worker polling"));
    }) : [el("tr", {}, el("td", { class: "muted" }, "no task queues reported"))]);
    const f = data.in_flight;
    $("in-flight").textContent = f ? `${text(f.total)} withdrawal(s) in flight` : "";
  }

  // ---- needs attention -------------------------------------------------------------------------

  async function refreshAttention() {
    try {
      const data = await api("GET", "/admin/dlq/messages?limit=100");
      const items = data.items || [];
      const total = data.total ?? items.length;
      $("attention-total").textContent = `${text(total)} withdrawal(s)${total > items.length ? `, newest ${items.length} shown` : ""}`;
      $("attention-empty").hidden = items.length > 0;
      fillTable($("attention-table"), items.map((w) => el("tr", { dataset: { id: w.id } },
        cell(w.parked_at || w.updated_at),
        el("td", {}, el("button", { type: "button", class: "link", title: w.id, on: { click: () => loadDetail(w.id) } }, short(w.id, 4))),
        cell(w.network), cell(w.asset), cell(w.amount, { class: "num" }),
        el("td", { class: "reason" }, errorText(w.reason || w.error)),
        el("td", { class: "next" }, text(w.next_action)),
        el("td", { class: "actions" },
          opButton("Retry", () => withdrawalAction(w.id, "retry"), "retry"),
          opButton("Cancel", () => withdrawalAction(w.id, "cancel"), "danger cancel")))));
      showError("attention-error", null);
    } catch (e) {
      showError("attention-error", e);
    }
  }

  // ---- search and detail -----------------------------------------------------------------------

  let searchQuery = null;
  let searchCursor = null;
  let searchSeq = 0; // answers to an older search are dropped

  function searchParams() {
    const q = new URLSearchParams();
    for (const [id, name] of [["f-status", "status"], ["f-network", "network"], ["f-asset", "asset"], ["f-user", "user_id"], ["f-tx", "tx_hash"]]) {
      const v = $(id).value.trim();
      if (v) q.set(name, v);
    }
    q.set("limit", "50");
    return q;
  }

  async function search(more) {
    if (!more) {
      searchQuery = searchParams();
      searchCursor = null;
      $("results-table").tBodies[0].replaceChildren();
      $("search-more").hidden = true;
      $("search-summary").textContent = "searching…";
    }
    const q = new URLSearchParams(searchQuery);
    if (more && searchCursor) q.set("cursor", searchCursor);
    const seq = ++searchSeq;
    try {
      const data = await api("GET", `/admin/transactions?${q}`);
      if (seq !== searchSeq) return;
      const rows = (data.items || []).map((w) => el("tr", { dataset: { id: w.id } },
        cell(w.created_at),
        el("td", {}, el("button", { type: "button", class: "link", title: w.id, on: { click: () => loadDetail(w.id) } }, short(w.id, 4))),
        el("td", { class: `status ${w.status}` }, text(w.status)),
        cell(w.network), cell(w.asset), cell(w.amount, { class: "num" }),
        el("td", { title: w.to_address }, short(w.to_address, 6)), cell(w.user_id),
        el("td", { title: w.tx_hash || "" }, short(w.tx_hash, 6))));
      const body = $("results-table").tBodies[0];
      if (more) body.append(...rows);
      else body.replaceChildren(...rows);
      searchCursor = data.next_cursor || null;
      $("search-more").hidden = !searchCursor;
      $("search-summary").textContent = `${body.rows.length} shown of ${text(data.total)}, as of ${new Date().toLocaleTimeString()} (search again to refresh)`;
      showError("search-error", null);
    } catch (e) {
      showError("search-error", e);
    }
  }

  let detailId = null;

  function fees(a) {
    const parts = [];
    if (a.max_fee_per_gas) parts.push(`max ${a.max_fee_per_gas}`);
    if (a.max_priority_fee_per_gas) parts.push(`tip ${a.max_priority_fee_per_gas}`);
    if (a.gas_price) parts.push(`price ${a.gas_price}`);
    return parts.length ? `${parts.join(", ")} wei` : "—";
  }

  async function loadDetail(id) {
    detailId = id;
    const section = $("detail");
    section.hidden = false;
    $("detail-id").textContent = id;
    try {
      const w = await api("GET", `/admin/transactions/${encodeURIComponent(id)}`);
      if (detailId !== id) return;
      const fields = [
        ["Status", w.status], ["Network", w.network], ["Asset", w.asset], ["Amount", w.amount],
        ["To", w.to_address], ["User", w.user_id], ["Client", w.client_id], ["Client reference", w.client_reference],
        ["Hot wallet", w.hot_wallet], ["Nonce", w.nonce], ["Tx hash", w.tx_hash],
        ["Confirmations", `${text(w.confirmations)} / ${text(w.required_confirmations)}`], ["Fee", w.fee],
        ["Error", w.error ? errorText(w.error) : null],
        ["Workflow", w.workflow_id], ["Created", w.created_at], ["Updated", w.updated_at],
      ];
      $("detail-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { field: k } }, text(v))]));
      const link = $("detail-temporal");
      let url = null;
      try { url = w.temporal_url ? new URL(w.temporal_url) : null; } catch (_) { url = null; }
      if (url && (url.protocol === "http:" || url.protocol === "https:")) {
        link.href = url.href;
        link.hidden = false;
      } else {
        link.removeAttribute("href");
        link.hidden = true;
      }
      $("detail-retry").disabled = !canOperate() || w.status !== "NEEDS_ATTENTION";
      const terminal = TERMINAL.includes(w.status);
      $("detail-cancel").disabled = !canOperate() || terminal;
      fillTable($("attempts-table"), (w.attempts || []).map((a) => el("tr", {},
        el("td", { title: a.tx_hash || "" }, short(a.tx_hash, 8)), cell(a.nonce), cell(a.purpose), cell(a.type),
        el("td", {}, fees(a)), cell(a.outcome), cell(a.error))));
      fillTable($("history-table"), (w.history || []).map((h) => {
        const action = h.kind === "action";
        const what = action ? `${text(h.action)}${h.outcome && h.outcome !== "ok" ? ` (${h.outcome})` : ""}` : text(h.status);
        const who = action ? `${text(h.actor)}${h.role ? ` (${h.role})` : ""}${h.source ? ` via ${h.source}` : ""}` : "engine";
        const detail = [h.reason, h.error && errorText(h.error)].filter(Boolean).join(" · ");
        return el("tr", { class: action ? "action" : null, dataset: { kind: h.kind || "" } },
          cell(h.at), el("td", { class: action ? null : `status ${h.status}` }, what), cell(who), cell(detail || null));
      }));
      showError("detail-error", null);
    } catch (e) {
      showError("detail-error", e);
    }
  }

  async function refreshDetail() {
    // an open withdrawal that is still moving follows its status
    const status = $("detail-fields").querySelector('dd[data-field="Status"]');
    if (detailId && !$("detail").hidden && status && !TERMINAL.includes(status.textContent)) await loadDetail(detailId);
  }

  // ---- networks (health) -----------------------------------------------------------------------

  async function refreshHealth() {
    try {
      const data = await api("GET", "/admin/health");
      const status = $("health-status");
      status.textContent = text(data.status);
      status.className = data.status === "ok" ? "good" : "bad";
      const c = data.components || {};
      const simple = Object.entries(c).filter(([k]) => k !== "rpc" && k !== "hot_wallets");
      fillTable($("components-table"), simple.map(([k, v]) => {
        const state = v && typeof v === "object" ? v.status ?? JSON.stringify(v) : v;
        const cls = state === "ok" ? "good" : state === "not configured" || state === "disabled" ? "muted" : "bad";
        return el("tr", { dataset: { component: k } }, el("th", {}, k), el("td", { class: cls }, text(state)));
      }));
      const rpc = c.rpc || {};
      fillTable($("rpc-table"), Object.keys(rpc).sort().flatMap((n) => (rpc[n] || []).map((e) => el("tr", { dataset: { network: n } },
        el("th", {}, n), cell(e.endpoint), cell(e.chain_id), cell(e.head, { class: "num", dataset: { head: "" } }),
        cell(e.lag_s, { class: "num" }), el("td", { class: e.healthy ? "good" : "bad" }, e.healthy ? "yes" : `no${e.error ? ` (${e.error})` : ""}`)))));
      const wallets = c.hot_wallets || data.hot_wallets || {};
      fillTable($("wallets-table"), Object.keys(wallets).sort().flatMap((n) => (wallets[n] || []).map((w) => el("tr", { dataset: { network: n } },
        el("th", {}, n), el("td", { class: "mono" }, text(w.address)), cell(w.asset),
        cell(w.balance, { class: "num", dataset: { balance: "" } }), cell(w.reserved, { class: "num" }), cell(w.min_balance, { class: "num" }),
        el("td", { class: w.low ? "bad" : w.error ? "bad" : "good" }, w.error ? w.error : w.low ? "LOW" : w.low === false ? "ok" : "—")))));
      showError("networks-error", null);
    } catch (e) {
      showError("networks-error", e);
    }
  }

  // ---- settings --------------------------------------------------------------------------------

  function kvTable(caption, rows) {
    return el("table", { class: "kv" }, el("caption", {}, caption),
      el("tbody", {}, rows.map(([k, v]) => el("tr", {}, el("th", {}, k), cell(v)))));
  }

  async function loadSettings() {
    try {
      const s = await api("GET", "/admin/settings");
      const general = Object.entries(s).filter(([k]) => k !== "networks");
      const plain = (v) => (v && typeof v === "object" && !Array.isArray(v)
        ? Object.entries(v).map(([a, b]) => `${a}: ${b === true ? "on" : b === false ? "off" : text(b)}`).join(", ")
        : text(v));
      $("settings-general").replaceChildren(...general.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, plain(v))]));
      const names = Object.keys(s.networks || {}).sort();
      if (!networkNames.length) setNetworks(names);
      const assets = [...new Set(names.flatMap((n) => Object.keys(s.networks[n].assets || {})))].sort();
      const assetSelect = $("f-asset");
      const chosen = assetSelect.value;
      assetSelect.replaceChildren(el("option", { value: "" }, "any"), ...assets.map((a) => el("option", { value: a }, a)));
      assetSelect.value = assets.includes(chosen) ? chosen : "";
      $("settings-networks").replaceChildren(...names.map((name) => {
        const n = s.networks[name];
        const assets = Object.entries(n.assets || {});
        return el("div", { class: "network-settings", dataset: { network: name } },
          el("h3", {}, `${name} `, el("span", { class: "muted" }, `chain ${text(n.chain_id)}, native ${text(n.native_asset)}`)),
          el("div", { class: "grid" },
            kvTable("Chain", [["required_confirmations", n.required_confirmations], ["finality", n.finality],
              ["block_time_seconds", n.block_time_seconds], ["stuck_after_blocks", n.stuck_after_blocks],
              ["rpc_endpoints", (n.rpc_endpoints || []).join(", ")], ["rpc_timeout_seconds", n.rpc_timeout_seconds]]),
            kvTable("Fees", Object.entries(n.fees || {}))),
          el("div", { class: "scroll" }, el("table", { class: "assets" },
            el("caption", {}, "Limits and thresholds per asset (asset units)"),
            el("thead", {}, el("tr", {}, ["Asset", "Decimals", "Per transaction", "Daily per user", "Approval above",
              "Four eyes above", "Min hot-wallet balance"].map((h) => el("th", {}, h)))),
            el("tbody", {}, assets.map(([a, l]) => el("tr", { dataset: { asset: a } },
              el("th", {}, a), cell(l.decimals), cell(l.per_transaction, { class: "num" }), cell(l.daily_per_user, { class: "num" }),
              cell(l.approval_threshold, { class: "num" }), cell(l.four_eyes_threshold, { class: "num", dataset: { fourEyes: "" } }),
              cell(l.min_hot_wallet_balance, { class: "num" })))))),
          kvTable("Hot wallets and tokens", [
            ...(n.hot_wallets || []).map((w, i) => [`hot wallet ${i + 1}`, w]),
            ...Object.entries(n.tokens || {}).map(([sym, t]) => [sym, `${t.address} (${t.decimals} decimals)`]),
          ]));
      }));
      showError("settings-error", null);
    } catch (e) {
      showError("settings-error", e);
    }
  }

  // ---- polling ---------------------------------------------------------------------------------

  let pollTimer = null;
  let refreshing = false;

  let refreshAgain = false;

  async function refreshAll() {
    if (!session) return;
    if (refreshing) {
      refreshAgain = true; // an action's outcome must show without waiting for the next tick
      return;
    }
    refreshing = true;
    try {
      do {
        refreshAgain = false;
        await refreshCounts(); // first: it names the networks the other sections list
        await Promise.all([refreshAlerts(), refreshQueues(), refreshAttention(), refreshHealth(), refreshDetail()]);
        $("last-refresh").textContent = `updated ${new Date().toLocaleTimeString()}`;
      } while (refreshAgain && session);
    } finally {
      refreshing = false;
    }
  }

  function startPolling() {
    stopPolling();
    pollTimer = setInterval(() => {
      if (!document.hidden && $("auto-refresh").checked) refreshAll();
    }, REFRESH_MS);
  }

  function stopPolling() {
    clearInterval(pollTimer);
    pollTimer = null;
  }

  function start() {
    $("login-view").hidden = true;
    $("app").hidden = false;
    $("session").hidden = false;
    $("whoami").textContent = `${session.username} (${session.role})`;
    for (const b of document.querySelectorAll("button[data-op]")) {
      // the pause-everything pair waits for /admin/queues to say which one applies
      b.disabled = !canOperate() || b.id === "pause-all" || b.id === "resume-all";
      b.title = canOperate() ? "" : "requires role OPERATOR";
    }
    clearTimeout(expiryTimer);
    expiryTimer = setTimeout(() => logout("Your session has expired; log in again."), Math.max(0, session.expiresAt - Date.now()));
    loadSettings();
    refreshAll();
    search(false);
    startPolling();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("refresh-seconds").textContent = String(REFRESH_MS / 1000);
    const statusSelect = $("f-status");
    statusSelect.append(...STATUSES.map((s) => el("option", { value: s }, s)));
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", () => logout("Logged out."));
    $("pause-all").addEventListener("click", () => pauseAction("pause", {}));
    $("resume-all").addEventListener("click", () => pauseAction("resume", {}));
    $("search-form").addEventListener("submit", (e) => { e.preventDefault(); search(false); });
    $("search-form").addEventListener("reset", () => setTimeout(() => search(false), 0));
    $("search-more").addEventListener("click", () => search(true));
    $("detail-close").addEventListener("click", () => { detailId = null; $("detail").hidden = true; });
    $("detail-refresh").addEventListener("click", () => detailId && loadDetail(detailId));
    $("detail-retry").addEventListener("click", () => detailId && withdrawalAction(detailId, "retry"));
    $("detail-cancel").addEventListener("click", () => detailId && withdrawalAction(detailId, "cancel"));
    $("settings-refresh").addEventListener("click", loadSettings);
    $("login-error").textContent = sessionStorage.getItem(NOTICE) || "";
    sessionStorage.removeItem(NOTICE);
    if (session) start();
    else $("login-username").focus();
  });
})();
