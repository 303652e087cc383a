// Settings → Two-factor authentication: turn it on (QR code and key, then a
// code to confirm, then the recovery codes shown once), turn it off, make
// new recovery codes. Every action is a call to /v1/me/2fa (api.js).
(function () {
  "use strict";

  function codesBox(section) { return section.querySelector("[data-twofa-codes]"); }

  function showCodes(section, codes) {
    const box = codesBox(section);
    const list = box.querySelector("[data-twofa-code-list]");
    list.textContent = "";
    codes.forEach(function (code) {
      const item = document.createElement("li");
      const text = document.createElement("code");
      text.textContent = code;
      item.appendChild(text);
      list.appendChild(item);
    });
    box.dataset.codes = codes.join("\n");
    box.hidden = false;
    // The forms that made them are done with.
    section.querySelectorAll("[data-twofa-enrol], .twofa-actions").forEach(function (el) { el.hidden = true; });
    box.focus();
  }

  function codesText(box) {
    return "PlasmaArt recovery codes\n" +
      "Each logs you in once in place of a code from your authenticator app.\n\n" +
      box.dataset.codes + "\n";
  }

  async function start(section, button) {
    const error = section.querySelector("[data-twofa-start-error]");
    button.disabled = true;
    const result = await window.PA.call("POST", "/v1/me/2fa", null);
    button.disabled = false;
    if (!result.ok) {
      error.textContent = window.PA.sentence((result.data && result.data.detail) || "Two-factor could not be started.");
      error.hidden = false;
      return;
    }
    error.hidden = true;
    const enrol = section.querySelector("[data-twofa-enrol]");
    enrol.querySelector("[data-twofa-qr]").src = result.data.qr_code;
    // In groups of four, as authenticator apps show keys; they ignore spaces.
    enrol.querySelector("[data-twofa-secret]").textContent = result.data.secret.replace(/(.{4})(?=.)/g, "$1 ");
    enrol.hidden = false;
    button.hidden = true;
    enrol.querySelector("input[name=code]").focus();
  }

  const actions = {
    confirm: { method: "POST", url: "/v1/me/2fa/confirm" },
    regenerate: { method: "POST", url: "/v1/me/2fa/recovery-codes" },
    disable: { method: "DELETE", url: "/v1/me/2fa",
      confirm: "Turn off two-factor? Logging in will need only your password, and your recovery codes stop working." }
  };

  async function submit(section, form) {
    const action = actions[form.dataset.twofaForm];
    if (action.confirm && !window.confirm(action.confirm)) return;
    const input = form.querySelector("input[name=code]");
    const code = input.value.trim();
    if (!code) {
      window.PA.showErrors(form, { data: { errors: [{ field: "code", message: "Enter the code from your app." }] } });
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    window.PA.clearErrors(form);
    const result = await window.PA.call(action.method, action.url, { code: code });
    button.disabled = false;
    if (!result.ok) {
      const problem = result.data || {};
      if (problem.code === "otp_invalid" || problem.code === "otp_required") {
        problem.errors = [{ field: "code", message: "That code is wrong or was used already. Wait for the next code and try again." }];
      }
      window.PA.showErrors(form, result);
      return;
    }
    input.value = "";
    if (form.dataset.twofaForm === "disable") {
      window.PA.flash("Two-factor authentication is off.");
      window.location.reload();
      return;
    }
    if (form.dataset.twofaForm === "confirm") {
      // No toast: the notice of it arrives live (live.js) and says so.
      section.querySelectorAll("[data-twofa-off], [data-twofa-start]").forEach(function (el) { el.hidden = true; });
      section.querySelector("[data-twofa-now-on]").hidden = false;
    }
    showCodes(section, result.data.recovery_codes);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const section = document.querySelector("[data-twofa]");
    if (!section) return;
    const startButton = section.querySelector("[data-twofa-start]");
    if (startButton) startButton.addEventListener("click", function () { start(section, startButton); });
    section.addEventListener("submit", function (event) {
      const form = event.target.closest("[data-twofa-form]");
      if (!form) return;
      event.preventDefault();
      submit(section, form);
    });
    const box = codesBox(section);
    box.querySelector("[data-twofa-copy]").addEventListener("click", function () {
      navigator.clipboard.writeText(box.dataset.codes || "").then(
        function () { window.PA.toast("Copied."); },
        function () { window.PA.toast("Select the codes and copy them yourself.", "error"); }
      );
    });
    box.querySelector("[data-twofa-download]").addEventListener("click", function () {
      const url = URL.createObjectURL(new Blob([codesText(box)], { type: "text/plain" }));
      const link = document.createElement("a");
      link.href = url;
      link.download = "plasmaart-recovery-codes.txt";
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
    });
    box.querySelector("[data-twofa-done]").addEventListener("click", function () {
      window.location.reload();
    });
  });
})();
