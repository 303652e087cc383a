// The page a verification (or change-of-address) link opens: it posts the
// link's token to the API (never on GET, so mail scanners that fetch links
// cannot use it up) and shows what came of it.
(function () {
  "use strict";
  function show(card, state) {
    card.querySelectorAll("[data-verify-state]").forEach(function (el) {
      el.hidden = el.dataset.verifyState !== state;
    });
    const heading = card.querySelector("h1");
    if (heading) heading.focus();
  }
  document.addEventListener("DOMContentLoaded", async function () {
    const card = document.querySelector("[data-verify-token]");
    if (!card || !card.dataset.verifyToken) return;
    const result = await window.PA.call("POST", "/v1/auth/verify-email", { token: card.dataset.verifyToken });
    if (result.ok) {
      card.querySelector("[data-verify-email]").textContent = result.data.user.email;
      show(card, "done");
      return;
    }
    if (result.status === 400 && result.data && result.data.code === "invalid_token") {
      show(card, "invalid");
      return;
    }
    const problem = result.data || {};
    card.querySelector("[data-verify-error]").textContent = window.PA.sentence(problem.detail || problem.title || "The address could not be confirmed (" + result.status + ")");
    show(card, "error");
  });
})();
