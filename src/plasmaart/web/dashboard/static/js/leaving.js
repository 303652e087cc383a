// Settings: the "Delete account" form. The typed confirmation is checked
// here (it never leaves the browser); the password and the two-factor code
// go to DELETE /v1/me, and the browser lands on the goodbye page.
(function () {
  "use strict";

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)pa_csrf=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function show(form, field, message) {
    const slot = form.querySelector('[data-error-for="' + field + '"]') || form.querySelector('[data-error-for="body"]');
    slot.textContent = message.charAt(0).toUpperCase() + message.slice(1);
    slot.hidden = false;
    const input = form.querySelector('[name="' + field + '"]');
    if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
  }

  function clear(form) {
    form.querySelectorAll("[data-error-for]").forEach(function (el) { el.hidden = true; el.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach(function (el) { el.removeAttribute("aria-invalid"); });
  }

  async function deleteAccount(event) {
    const form = event.target;
    if (!form.matches || !form.matches("[data-delete-account]")) return;
    event.preventDefault();
    clear(form);
    const password = form.elements.password.value;
    const otp = form.elements.otp ? form.elements.otp.value.trim() : "";
    const typed = form.elements.confirm.value.trim().toLowerCase();
    if (!password) { show(form, "password", "Enter your password."); return; }
    if (form.elements.otp && !otp) { show(form, "otp", "Enter a code from your authenticator app."); return; }
    if (typed !== form.dataset.email.toLowerCase()) {
      show(form, "confirm", "Type your e-mail address exactly to confirm.");
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const body = { password: password };
    if (otp) body.otp = otp;
    let response;
    try {
      response = await fetch("/v1/me", {
        method: "DELETE",
        credentials: "same-origin",
        headers: { "Accept": "application/json", "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
        body: JSON.stringify(body)
      });
    } catch (error) {
      button.disabled = false;
      show(form, "body", "The server cannot be reached. Nothing was deleted; try again.");
      return;
    }
    if (response.ok) { window.location.assign("/goodbye"); return; }
    button.disabled = false;
    const problem = (response.headers.get("content-type") || "").includes("json") ? await response.json() : {};
    const field = problem.code === "wrong_password" ? "password"
      : (problem.code === "otp_required" || problem.code === "otp_invalid") ? "otp" : "body";
    show(form, form.querySelector('[data-error-for="' + field + '"]') ? field : "body",
      problem.detail || ("Request failed (" + response.status + ")"));
  }

  document.addEventListener("submit", deleteAccount);
})();
