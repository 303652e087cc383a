// Sign-up and login: the JSON API sets the session cookies; then on to the
// page the visitor wanted (the server only ever hands us a local path).
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    const form = document.querySelector("form[data-auth]");
    if (!form) return;
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const mode = form.dataset.auth;
      const body = { email: form.email.value.trim(), password: form.password.value };
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      const result = await window.PA.call("POST", "/v1/auth/" + mode, body);
      button.disabled = false;
      if (!result.ok) {
        if (result.status === 401 && result.data) {
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
