// kmsd console: the little the server-rendered pages cannot do alone.
// Every page works without this file; with it, key store states update
// live, the overview and cluster pages refresh, and the policy editor
// checks its JSON as it is typed.
"use strict";

// Key stores: poll the JSON of the stores and update each row in place,
// so focus and open forms stay where they are.
function pollStores(table) {
  const status = document.getElementById("live-status");
  let timer = null;
  // Every second while a store is CONNECTING or DISCONNECTING, else every
  // three: each poll is a DescribeCustomKeyStores request, audited.
  let every = 1000;
  async function tick() {
    clearTimeout(timer);
    try {
      const resp = await fetch(table.dataset.poll, {credentials: "same-origin", headers: {"Accept": "application/json"}});
      if (resp.status === 401) { status.textContent = "(signed out: reload to sign in)"; return; }
      const body = await resp.json();
      if (!resp.ok) { status.textContent = "(" + (body.error || resp.status) + ")"; }
      else {
        status.textContent = "(updated " + new Date().toLocaleTimeString() + ")";
        every = body.stores.some((s) => s.state.endsWith("ING")) ? 1000 : 3000;
        for (const s of body.stores) {
          const row = table.querySelector('tr[data-store="' + CSS.escape(s.id) + '"]');
          if (!row) { continue; }
          const state = row.querySelector(".state");
          if (state.textContent !== s.state) { state.textContent = s.state; }
          row.querySelector(".code").textContent = s.errorCode || "";
          row.querySelector(".hint").textContent = s.hint || "";
          row.dataset.state = s.state;
        }
      }
    } catch (e) {
      status.textContent = "(kmsd unreachable)";
    }
    timer = setTimeout(tick, every);
  }
  timer = setTimeout(tick, every);
  // Connect and Disconnect are sent without leaving the page; the
  // outcome (AWS's exception and message on refusal) shows above the
  // table, and the states are polled again at once.
  const out = document.getElementById("action-status");
  table.querySelectorAll("form[data-inplace]").forEach((form) => {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        // getAttribute: form.action is the form's input named "action".
        const resp = await fetch(form.getAttribute("action"), {method: "POST", credentials: "same-origin",
          headers: {"Accept": "application/json"}, body: new URLSearchParams(new FormData(form))});
        const f = await resp.json();
        out.className = "flash " + (f.ok ? "ok" : "err");
        out.textContent = (f.code ? f.code + ": " : "") + (f.message || "");
      } catch (e) {
        out.className = "flash err";
        out.textContent = "The request failed: " + e.message;
      }
      tick();
    });
  });
}

// Regions marked data-live="ms" are fetched again and replaced; they hold
// no form controls, so nothing the user is doing is lost.
function refresh(region) {
  const every = parseInt(region.dataset.live, 10) || 5000;
  async function tick() {
    try {
      const resp = await fetch(location.href, {credentials: "same-origin"});
      if (resp.ok) {
        const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
        const fresh = doc.getElementById(region.id);
        if (fresh) { region.replaceChildren(...fresh.childNodes); }
      }
    } catch (e) { /* try again later */ }
    setTimeout(tick, every);
  }
  setTimeout(tick, every);
}

// The policy editor: JSON that does not parse, or lacks a Statement,
// is reported before it is sent (kmsd validates it fully).
function policyEditor(form) {
  const area = form.querySelector("textarea");
  const out = form.querySelector("#policy-check");
  const button = form.querySelector("button[type=submit]");
  function check() {
    let msg = "";
    try {
      const doc = JSON.parse(area.value);
      if (typeof doc !== "object" || doc === null || Array.isArray(doc)) { msg = "A policy is a JSON object."; }
      else if (!("Statement" in doc)) { msg = "A policy needs a Statement."; }
    } catch (e) {
      msg = "Not valid JSON: " + e.message;
    }
    out.textContent = msg || "Valid JSON.";
    out.className = msg ? "err" : "muted";
    area.setAttribute("aria-invalid", msg ? "true" : "false");
    button.disabled = msg !== "";
  }
  area.addEventListener("input", check);
  check();
}

document.addEventListener("DOMContentLoaded", () => {
  const stores = document.querySelector("table[data-poll]");
  if (stores) { pollStores(stores); }
  document.querySelectorAll("[data-live]").forEach(refresh);
  document.querySelectorAll("form[data-policy-editor]").forEach(policyEditor);
  const flash = document.getElementById("flash") || document.getElementById("error");
  if (flash) { flash.tabIndex = -1; flash.focus(); }
});
