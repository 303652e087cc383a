// The invitation page's "Log out and sign in as …": end this session, then
// the login page, which comes back to the invitation (a local path only).
(function () {
  "use strict";
  document.addEventListener("click", async function (event) {
    const button = event.target.closest("[data-switch-account]");
    if (!button) return;
    button.disabled = true;
    await window.PA.call("POST", "/v1/auth/logout", null);
    const next = button.dataset.next || "/login";
    window.location.assign(next.startsWith("/") && !next.startsWith("//") ? next : "/login");
  });
})();
