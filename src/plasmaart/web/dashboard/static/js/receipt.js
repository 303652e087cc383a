// The receipt page's one action: print it (or save it as a PDF).
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    const button = document.querySelector("[data-print]");
    if (button) button.addEventListener("click", function () { window.print(); });
  });
})();
