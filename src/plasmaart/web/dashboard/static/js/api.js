// The dashboard's one way to call the JSON API: same-origin fetch with the
// session cookie and the CSRF token, problem+json errors shown beside fields.
(function () {
  "use strict";

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)pa_csrf=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  async function call(method, url, body, extraHeaders) {
    const headers = Object.assign({ "Accept": "application/json" }, extraHeaders || {});
    const init = { method: method, headers: headers, credentials: "same-origin" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined && body !== null) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (error) {
      return { ok: false, status: 0, data: { detail: "The server cannot be reached. Check your connection and try again." } };
    }
    let data = null;
    const type = response.headers.get("content-type") || "";
    if (type.includes("json")) data = await response.json();
    return { ok: response.ok, status: response.status, data: data };
  }

  function clearErrors(form) {
    form.querySelectorAll("[data-error-for]").forEach(function (el) { el.hidden = true; el.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach(function (el) { el.removeAttribute("aria-invalid"); });
  }

  // Each problem+json error goes beside its field; what has no field of its
  // own goes to the form's general error line.
  function showErrors(form, result) {
    clearErrors(form);
    const problem = result.data || {};
    const errors = Array.isArray(problem.errors) && problem.errors.length
      ? problem.errors
      : [{ field: "body", message: problem.detail || problem.title || ("Request failed (" + result.status + ")") }];
    let firstInvalid = null;
    errors.forEach(function (error) {
      const field = String(error.field || "body").replace(/^body\./, "");
      let slot = form.querySelector('[data-error-for="' + CSS.escape(field) + '"]');
      if (!slot && field.startsWith("params.")) slot = form.querySelector('[data-error-for="params.sandbox"]') || form.querySelector('[data-error-for="' + CSS.escape(field.split(".").slice(0, 2).join(".")) + '"]');
      if (!slot) slot = form.querySelector('[data-error-for="body"]');
      if (!slot) return;
      const text = slot.dataset.errorFor !== "body" ? error.message
        : field !== "body" ? field + ": " + error.message : sentence(error.message);
      slot.textContent = slot.hidden || !slot.textContent ? text : slot.textContent + " " + text;
      slot.hidden = false;
      const input = form.querySelector('[name="' + CSS.escape(field) + '"]');
      if (input) {
        input.setAttribute("aria-invalid", "true");
        if (!firstInvalid) firstInvalid = input;
      }
    });
    if (firstInvalid) firstInvalid.focus();
  }

  function toast(message, kind) {
    const region = document.querySelector("[data-toasts]");
    if (!region || !message) return;
    const item = document.createElement("p");
    item.className = "toast" + (kind ? " " + kind : "");
    item.textContent = message;
    region.appendChild(item);
    setTimeout(function () { item.remove(); }, 6000);
  }

  // A message to show after the reload an action causes.
  function flash(message) {
    try { sessionStorage.setItem("pa-flash", message); } catch (e) { /* private mode */ }
  }

  function formBody(form) {
    const body = {};
    Array.from(form.elements).forEach(function (el) {
      if (!el.name || el.disabled || el.type === "submit" || el.type === "button" || el.type === "file") return;
      if (el.dataset.pathOnly !== undefined) return;
      if (el.type === "checkbox") { body[el.name] = el.checked; return; }
      const value = el.value.trim();
      if (el.dataset.type === "int") body[el.name] = value === "" ? null : Number(value);
      else if (el.dataset.type === "int-or-null") body[el.name] = value === "" ? null : Number(value);
      else if (el.dataset.type === "cents") body[el.name] = value === "" ? null : Math.round(Number(value) * 100);
      else body[el.name] = value;
    });
    return body;
  }

  const successHandlers = {
    reload: function (form) {
      if (form.dataset.message) flash(form.dataset.message);
      window.location.reload();
    },
    "api-key": function (form, data) { showSecret(form, data.key); form.reset(); },
    invitation: function (form, data) { showSecret(form, data.url || data.token); form.reset(); },
    // A page elsewhere for this customer (Stripe's customer portal): go there.
    redirect: function (form, data) { if (data.url) window.location.assign(data.url); },
    generation: function (form, data) {
      document.dispatchEvent(new CustomEvent("pa:generation", { detail: data }));
    }
  };

  function showSecret(form, value) {
    const box = form.querySelector("[data-secret]");
    if (!box) return;
    box.querySelector("[data-secret-value]").textContent = value;
    box.hidden = false;
    const copy = box.querySelector("[data-copy]");
    if (copy) copy.focus();
  }

  // <form class="js-api" data-method data-url data-success>: the generic action.
  async function submitApiForm(event) {
    const form = event.target;
    if (!form.classList || !form.classList.contains("js-api")) return;
    event.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    let url = form.dataset.url;
    if (form.dataset.urlTemplate) {
      const tokenField = form.querySelector("[data-path-only]");
      let value = tokenField ? tokenField.value.trim() : "";
      // A whole invitation link pasted: its token= is what the path wants.
      const linked = value.match(/[?&]token=([^&#\s]+)/);
      if (linked) value = decodeURIComponent(linked[1]);
      if (!value) { showErrors(form, { data: { errors: [{ field: tokenField.name, message: "Paste the token you were sent." }] } }); return; }
      url = form.dataset.urlTemplate.replace("{token}", encodeURIComponent(value));
    }
    const method = form.dataset.method || "POST";
    const body = method === "DELETE" ? null : formBody(form);
    const buttons = form.querySelectorAll("button[type=submit]");
    buttons.forEach(function (b) { b.disabled = true; });
    clearErrors(form);
    const result = await call(method, url, body);
    buttons.forEach(function (b) { b.disabled = false; });
    if (!result.ok) { showErrors(form, result); return; }
    if (result.data && result.data.checkout_url) { window.location.assign(result.data.checkout_url); return; }
    const handler = successHandlers[form.dataset.success || "reload"];
    handler(form, result.data || {});
  }

  async function logout() {
    await call("POST", "/v1/auth/logout", null);
    window.location.assign("/login");
  }

  document.addEventListener("submit", submitApiForm);
  document.addEventListener("click", function (event) {
    const target = event.target.closest("[data-logout], [data-copy]");
    if (!target) return;
    if (target.hasAttribute("data-logout")) { logout(); return; }
    const value = target.closest("[data-secret]").querySelector("[data-secret-value]").textContent;
    navigator.clipboard.writeText(value).then(
      function () { toast("Copied."); },
      function () { toast("Select the text and copy it yourself.", "error"); }
    );
  });
  document.addEventListener("DOMContentLoaded", function () {
    let message = null;
    try { message = sessionStorage.getItem("pa-flash"); sessionStorage.removeItem("pa-flash"); } catch (e) { /* private mode */ }
    if (message) toast(message, "success");
  });

  // "1 credit", "800 credits", "2,000 credits".
  const creditNumber = new Intl.NumberFormat("en-US");
  function credits(n) { return creditNumber.format(n) + (n === 1 ? " credit" : " credits"); }

  // A message as a sentence: a capital first letter and a closing full stop,
  // so that the next sentence does not run on ("failed No credits ...").
  function sentence(text) {
    const trimmed = String(text || "").trim();
    if (!trimmed) return "";
    const capital = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
    return /[.!?]$/.test(capital) ? capital : capital + ".";
  }

  window.PA = { call: call, showErrors: showErrors, clearErrors: clearErrors, toast: toast, flash: flash, formBody: formBody, credits: credits, sentence: sentence };
})();
