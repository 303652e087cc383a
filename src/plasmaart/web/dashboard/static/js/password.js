// Password reset (the forgot-password and reset-password pages) and changing
// the password on the settings page: each form calls the JSON API.
(function () {
  "use strict";

  function fail(form, field, message) {
    window.PA.showErrors(form, { data: { errors: [{ field: field, message: message }] } });
  }

  // Two-factor is on: show the code field (the API answered otp_required).
  function askForCode(form, message) {
    const wrap = form.querySelector("[data-otp-field]");
    if (!wrap) return;
    wrap.hidden = false;
    const input = wrap.querySelector("input");
    input.disabled = false;
    fail(form, "otp", message);
    input.focus();
  }

  function refused(form, result) {
    const code = result.data && result.data.code;
    if (code === "otp_required") { askForCode(form, "Enter the code from your authenticator app, or a recovery code."); return; }
    if (code === "otp_invalid") { askForCode(form, "This code is wrong, expired or was used already."); return; }
    window.PA.showErrors(form, result);
  }

  function matching(form, first, second) {
    if (form[first].value !== form[second].value) {
      fail(form, second, "The two passwords are not the same.");
      return false;
    }
    return true;
  }

  async function send(form, url, body) {
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    window.PA.clearErrors(form);
    const result = await window.PA.call("POST", url, body);
    button.disabled = false;
    return result;
  }

  function otpOf(form) {
    const input = form.querySelector("[data-otp-field] input");
    return input && !input.disabled && input.value.trim() ? input.value.trim() : null;
  }

  async function forgot(form, event) {
    event.preventDefault();
    const result = await send(form, "/v1/auth/password-reset", { email: form.email.value.trim() });
    if (!result.ok) { window.PA.showErrors(form, result); return; }
    const sent = document.querySelector("[data-forgot-sent]");
    sent.querySelector("[data-forgot-answer]").textContent = result.data.detail;
    form.hidden = true;
    const intro = document.querySelector("[data-forgot-intro]");
    if (intro) intro.hidden = true;
    sent.hidden = false;
    sent.focus();
  }

  async function reset(form, event) {
    event.preventDefault();
    if (!matching(form, "password", "password_again")) return;
    const body = { token: form.dataset.token, password: form.password.value };
    const otp = otpOf(form);
    if (otp) body.otp = otp;
    const result = await send(form, "/v1/auth/password-reset/confirm", body);
    if (!result.ok) { refused(form, result); return; }
    window.PA.flash("Your password is changed, and every other browser is logged out.");
    window.location.assign("/");
  }

  async function change(form, event) {
    event.preventDefault();
    if (!matching(form, "new_password", "new_password_again")) return;
    const body = { current_password: form.current_password.value, new_password: form.new_password.value };
    const otp = otpOf(form);
    if (otp) body.otp = otp;
    const result = await send(form, "/v1/me/password", body);
    if (!result.ok) { refused(form, result); return; }
    const ended = result.data.other_sessions_ended;
    window.PA.flash("Password changed." + (ended ? " " + ended + (ended === 1 ? " other session was" : " other sessions were") + " logged out." : ""));
    window.location.reload();
  }

  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (form.matches("form[data-forgot]")) forgot(form, event);
    else if (form.matches("form[data-reset]")) reset(form, event);
    else if (form.matches("form[data-change-password]")) change(form, event);
  });

  document.addEventListener("DOMContentLoaded", function () {
    // The token stays in the form; take it out of the address bar and history.
    if (document.querySelector("form[data-reset]") && window.location.search) {
      window.history.replaceState(null, "", window.location.pathname);
    }
  });
})();
