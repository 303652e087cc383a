// Credits → Balance alerts: add and remove alert rows (up to the page's
// data-max-alerts), then save them all, with the expiry notice's days, in
// one PUT /v1/balance-alerts (api.js). Errors come back per alert
// ("alerts.2.percent") and are shown beside that alert's row.
(function () {
  "use strict";

  function rows(section) { return Array.from(section.querySelectorAll("[data-alert-row]")); }

  // Each row's names and error slot follow its position, as the API numbers them.
  function renumber(section) {
    const max = Number(section.dataset.maxAlerts || 5);
    const all = rows(section);
    all.forEach(function (row, index) {
      const value = row.querySelector("[data-alert-value]");
      const kind = row.querySelector("[data-alert-kind]");
      value.name = "alerts." + index;
      value.id = "alert-value-" + index;
      kind.id = "alert-kind-" + index;
      const labels = row.querySelectorAll("label");
      labels[0].htmlFor = value.id;
      labels[0].textContent = "Threshold of alert " + (index + 1);
      labels[1].htmlFor = kind.id;
      labels[1].textContent = "Unit of alert " + (index + 1);
      row.querySelector(".field-error").dataset.errorFor = "alerts." + index;
    });
    section.querySelector("[data-alert-add]").disabled = section.dataset.locked === "true" || all.length >= max;
    section.querySelector("[data-alerts-none]").hidden = all.length > 0;
  }

  function add(section) {
    const template = section.querySelector("[data-alert-template]");
    const list = section.querySelector("[data-alert-rows]");
    list.appendChild(template.content.cloneNode(true));
    renumber(section);
    const added = rows(section);
    added[added.length - 1].querySelector("[data-alert-value]").focus();
  }

  function body(section, form) {
    const alerts = [];
    const missing = [];
    rows(section).forEach(function (row, index) {
      const raw = row.querySelector("[data-alert-value]").value.trim();
      if (raw === "") { missing.push({ field: "alerts." + index, message: "Enter a number, or remove this alert." }); return; }
      const alert = {};
      alert[row.querySelector("[data-alert-kind]").value] = Number(raw);
      alerts.push(alert);
    });
    const days = form.querySelector("[name=expiry_notice_days]").value.trim();
    return { missing: missing, body: { alerts: alerts, expiry_notice_days: days === "" ? null : Number(days) } };
  }

  // "alerts.2.percent" is shown at the row "alerts.2".
  function byRow(result) {
    const data = result.data || {};
    if (!Array.isArray(data.errors)) return result;
    const errors = data.errors.map(function (error) {
      const field = String(error.field || "body").replace(/^(alerts\.\d+)\.(credits|percent)$/, "$1");
      return { field: field, message: error.message };
    });
    return { ok: result.ok, status: result.status, data: Object.assign({}, data, { errors: errors }) };
  }

  async function save(section, form) {
    const built = body(section, form);
    if (built.missing.length) { window.PA.showErrors(form, { data: { errors: built.missing } }); return; }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    window.PA.clearErrors(form);
    const result = await window.PA.call("PUT", "/v1/balance-alerts", built.body);
    button.disabled = false;
    if (!result.ok) { window.PA.showErrors(form, byRow(result)); return; }
    window.PA.flash("Balance alerts saved.");
    window.location.reload();
  }

  document.addEventListener("DOMContentLoaded", function () {
    const section = document.querySelector("[data-alerts]");
    if (!section) return;
    const form = section.querySelector("[data-alerts-form]");
    // A suspended account's page shows the buttons disabled (locked).
    section.dataset.locked = String(form.querySelector("button[type=submit]").disabled);
    renumber(section);
    section.addEventListener("click", function (event) {
      if (event.target.closest("[data-alert-add]")) { add(section); return; }
      const remove = event.target.closest("[data-alert-remove]");
      if (remove) {
        remove.closest("[data-alert-row]").remove();
        renumber(section);
        section.querySelector("[data-alert-add]").focus();
      }
    });
    form.addEventListener("submit", function (event) { event.preventDefault(); save(section, form); });
  });
})();
