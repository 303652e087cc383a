// Sign-up and login: the JSON API sets the session cookies; then on to the
// page the visitor wanted (the server only ever hands us a local path).
// With two-factor on, the login answers otp_required once the password is
// right: the same form then asks for the code (or a recovery code), keeping
// the e-mail and password, and sends all three.
(function () {
  "use strict";

  function otpStep(form) { return form.querySelector("[data-otp-step]"); }

  function showOtpStep(form) {
    const step = otpStep(form);
    step.hidden = false;
    form.querySelector("button[type=submit]").textContent = "Verify and log in";
    form.otp.focus();
  }

  // Between the app's code and a recovery code: the label, hint and keyboard.
  function switchOtpKind(form) {
    const step = otpStep(form);
    const recovery = step.dataset.kind !== "recovery";
    step.dataset.kind = recovery ? "recovery" : "app";
    const key = recovery ? "recovery" : "app";
    ["[data-otp-label]", "[data-otp-hint]", "[data-otp-switch]"].forEach(function (selector) {
      const el = step.querySelector(selector);
      el.textContent = el.dataset[key];
    });
    form.otp.inputMode = recovery ? "text" : "numeric";
    form.otp.value = "";
    form.otp.focus();
  }

  document.addEventListener("DOMContentLoaded", function () {
    const form = document.querySelector("form[data-auth]");
    if (!form) return;
    const switcher = form.querySelector("[data-otp-switch]");
    if (switcher) switcher.addEventListener("click", function () { switchOtpKind(form); });
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const mode = form.dataset.auth;
      const body = { email: form.email.value.trim(), password: form.password.value };
      const step = otpStep(form);
      const asking = step && !step.hidden;
      if (asking) {
        const otp = form.otp.value.trim();
        if (!otp) {
          window.PA.showErrors(form, { data: { errors: [{ field: "otp", message: "Enter the code." }] } });
          return;
        }
        body.otp = otp;
      }
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      const result = await window.PA.call("POST", "/v1/auth/" + mode, body);
      button.disabled = false;
      if (!result.ok) {
        const code = result.data && result.data.code;
        if (code === "otp_required" && step) {
          window.PA.clearErrors(form);
          showOtpStep(form);
          return;
        }
        if (code === "otp_invalid") {
          const message = step.dataset.kind === "recovery"
            ? "That recovery code is wrong or was used already."
            : "That code is wrong or was used already. Wait for the next code, or use a recovery code.";
          result.data.errors = [{ field: "otp", message: message }];
          form.otp.value = "";
        } else if (result.status === 401 && result.data) {
          result.data.errors = [{ field: "password", message: "Wrong e-mail or password." }];
        }
        window.PA.showErrors(form, result);
        return;
      }
      if (mode === "signup" && result.status === 202) {
        // Address verification is on: no session yet, the link is in the mail.
        const sent = document.querySelector("[data-signup-sent]");
        sent.querySelector("[data-signup-email]").textContent = result.data.email;
        form.hidden = true;
        document.getElementById("auth-title").textContent = "Check your inbox";
        document.title = "Check your inbox · PlasmaArt";
        document.querySelectorAll(".switch").forEach(function (el) { el.hidden = true; });
        sent.hidden = false;
        sent.focus();
        return;
      }
      const next = form.dataset.next || "/";
      window.location.assign(next.startsWith("/") && !next.startsWith("//") ? next : "/");
    });
  });
})();
