// The Webhooks page: forms whose bodies api.js's generic forms cannot build
// (a list of checked events) or whose answer shows a secret once (a new
// endpoint, a rotation, the account's secret). Everything goes through the
// JSON API with window.PA.call; enable, disable, delete and replay are
// api.js's generic js-api forms.
(function () {
  "use strict";

  function endpointBody(form) {
    const body = {
      url: form.elements.url.value.trim(),
      description: form.elements.description.value.trim(),
      events: Array.from(form.querySelectorAll('input[name="events"]:checked')).map(function (box) { return box.value; })
    };
    // An unchanged URL is not sent: a PATCH then changes only what was edited.
    const initial = form.elements.url.dataset.initial;
    if (initial !== undefined && initial === body.url) delete body.url;
    return body;
  }

  function showSecret(box, value) {
    box.querySelector("[data-secret-value]").textContent = value;
    box.hidden = false;
    const copy = box.querySelector("[data-copy]");
    if (copy) copy.focus();
  }

  async function send(form, method, url, body) {
    const buttons = form.querySelectorAll("button[type=submit]");
    buttons.forEach(function (b) { b.disabled = true; });
    PA.clearErrors(form);
    const result = await PA.call(method, url, body);
    buttons.forEach(function (b) { b.disabled = false; });
    if (!result.ok) PA.showErrors(form, result);
    return result;
  }

  async function create(form) {
    const result = await send(form, "POST", "/v1/webhook-endpoints", endpointBody(form));
    if (!result.ok) return;
    // The list shows the endpoint once the secret is copied (Done reloads).
    form.querySelectorAll("input, button[type=submit]").forEach(function (el) { el.disabled = true; });
    showSecret(form.querySelector("[data-secret]"), result.data.secret);
  }

  async function edit(form) {
    const result = await send(form, "PATCH", form.dataset.url, endpointBody(form));
    if (!result.ok) return;
    PA.flash("Endpoint saved.");
    window.location.reload();
  }

  async function rotate(form) {
    if (!window.confirm(form.dataset.confirm)) return;
    const result = await send(form, "POST", form.dataset.url, null);
    if (!result.ok) return;
    form.querySelector("button[type=submit]").disabled = true;
    showSecret(form.querySelector("[data-secret]"), result.data.secret);
  }

  async function accountSecret(button, rotating) {
    const section = button.closest("[data-account-secret]");
    const error = section.querySelector("[data-account-secret-error]");
    if (rotating && !window.confirm(button.dataset.confirm)) return;
    error.hidden = true;
    const result = rotating
      ? await PA.call("POST", "/v1/webhook-secret/rotate", null)
      : await PA.call("GET", "/v1/webhook-secret", null);
    if (!result.ok) {
      error.textContent = PA.sentence((result.data && result.data.detail) || "The secret could not be read.");
      error.hidden = false;
      return;
    }
    showSecret(section.querySelector("[data-secret]"), result.data.secret);
    if (rotating) PA.toast("A new account secret is in force.", "success");
  }

  document.addEventListener("submit", function (event) {
    const form = event.target;
    let action = null;
    if (form.hasAttribute("data-webhook-create")) action = create;
    else if (form.hasAttribute("data-webhook-edit")) action = edit;
    else if (form.hasAttribute("data-webhook-rotate")) action = rotate;
    if (!action) return;
    event.preventDefault();
    action(form);
  });

  document.addEventListener("click", function (event) {
    const target = event.target.closest("[data-reload], [data-reveal-secret], [data-rotate-account-secret]");
    if (!target) return;
    if (target.hasAttribute("data-reload")) {
      if (target.dataset.message) PA.flash(target.dataset.message);
      window.location.reload();
    } else {
      accountSecret(target, target.hasAttribute("data-rotate-account-secret"));
    }
  });
})();
