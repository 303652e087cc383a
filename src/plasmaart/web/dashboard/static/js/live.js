// Live updates from /v1/events: balances, generations and notifications
// change on the page as they change on the server, without a reload.
(function () {
  "use strict";
  const number = new Intl.NumberFormat("en-US");

  function setBalance(data) {
    document.querySelectorAll('[data-live-balance="available"]').forEach(function (el) {
      el.textContent = number.format(data.available);
    });
    document.querySelectorAll('[data-live-balance="held"]').forEach(function (el) {
      el.textContent = number.format(data.held);
    });
    document.querySelectorAll("[data-live-held-wrap]").forEach(function (el) { el.hidden = !data.held; });
    document.dispatchEvent(new CustomEvent("pa:balance", { detail: data }));
  }

  function bumpUnread() {
    document.querySelectorAll("[data-live-unread]").forEach(function (el) {
      el.textContent = String((parseInt(el.textContent, 10) || 0) + 1);
      el.hidden = false;
    });
  }

  function addNotification(data) {
    bumpUnread();
    window.PA.toast(data.title);
    const list = document.querySelector("[data-notification-list]");
    if (!list) return;
    const empty = list.querySelector("[data-empty]");
    if (empty) empty.remove();
    const item = document.createElement("li");
    item.className = "notification unread";
    item.dataset.notificationId = data.id;
    const box = document.createElement("div");
    [["n-title", data.title], ["n-body", data.body], ["muted small", new Date(data.created_at).toUTCString()]].forEach(function (part) {
      const p = document.createElement("p");
      p.className = part[0];
      p.textContent = part[1];
      box.appendChild(p);
    });
    item.appendChild(box);
    list.prepend(item);
  }

  async function refreshBalance() {
    const result = await window.PA.call("GET", "/v1/balance");
    if (result.ok) setBalance(result.data);
  }

  function connect() {
    if (!window.EventSource) return;
    const source = new EventSource("/v1/events");
    source.addEventListener("balance.updated", function (e) { setBalance(JSON.parse(e.data)); });
    source.addEventListener("notification", function (e) { addNotification(JSON.parse(e.data)); });
    source.addEventListener("generation.updated", function (e) {
      document.dispatchEvent(new CustomEvent("pa:generation", { detail: JSON.parse(e.data) }));
    });
    // Events may have been missed (a reconnect): read the current state again.
    source.addEventListener("resync", function () {
      refreshBalance();
      document.dispatchEvent(new CustomEvent("pa:resync"));
    });
    source.addEventListener("open", function () { document.body.dataset.liveState = "open"; });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  // Rows of the home page's recent generations.
  document.addEventListener("pa:generation", function (event) {
    const g = event.detail;
    document.querySelectorAll('tr[data-generation-id="' + CSS.escape(g.id) + '"]').forEach(function (row) {
      const status = row.querySelector('[data-field="status"]');
      status.textContent = g.status;
      status.className = "status status-" + g.status;
      const credits = row.querySelector('[data-field="credits"]');
      credits.textContent = g.status === "succeeded" ? number.format(g.credits_charged)
        : (g.status === "failed" || g.status === "canceled") ? "0" : number.format(g.credits_held) + " held";
      row.querySelector('[data-field="balance_after"]').textContent = number.format(g.balance_after);
    });
  });

  document.addEventListener("DOMContentLoaded", connect);
  window.PA_LIVE = { setBalance: setBalance, number: number };
})();
