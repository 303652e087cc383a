// The gallery: each card follows its generation's live state (status, queue
// position, progress, credits), and shows its outputs once it succeeds.
(function () {
  "use strict";
  const TERMINAL = ["succeeded", "failed", "canceled"];

  function field(card, name) { return card.querySelector('[data-field="' + name + '"]'); }

  function renderOutputs(card, g) {
    const box = field(card, "outputs");
    if (!g.outputs || box.children.length) return;
    g.outputs.forEach(function (output, index) {
      const src = "/v1/outputs/" + encodeURIComponent(output.id) + "/content";
      const figure = document.createElement("figure");
      figure.className = "output";
      let media;
      if (output.content_type.startsWith("video/")) {
        media = document.createElement("video");
        media.controls = true;
        media.preload = "metadata";
        media.setAttribute("aria-label", "Video " + (index + 1) + " of " + g.prompt.slice(0, 60));
      } else {
        media = document.createElement("img");
        media.alt = "Output " + (index + 1) + ": " + g.prompt.slice(0, 80);
        if (output.width) { media.width = output.width; media.height = output.height; }
      }
      media.src = src;
      const caption = document.createElement("figcaption");
      const link = document.createElement("a");
      link.href = src;
      // Saved under the name the server's Content-Disposition gives:
      // plasmaart-<generation>-<n>.<ext>.
      link.setAttribute("download", "");
      link.textContent = "Download";
      caption.appendChild(link);
      figure.append(media, caption);
      box.appendChild(figure);
    });
  }

  function update(card, g) {
    const number = window.PA_LIVE.number;
    card.dataset.status = g.status;
    const status = field(card, "status");
    status.textContent = g.status;
    status.className = "status status-" + g.status;
    const queue = field(card, "queue");
    queue.hidden = g.status !== "queued";
    if (g.status === "queued") {
      queue.textContent = g.queue_position ? "Queued, position " + g.queue_position : "Queued";
    }
    const progress = field(card, "progress");
    if (g.status === "running" && progress.hidden) {
      const elapsed = field(card, "elapsed");
      if (elapsed && !elapsed.dataset.startedAt) elapsed.dataset.startedAt = new Date().toISOString();
    }
    progress.hidden = g.status !== "running";
    tick();
    field(card, "credits").textContent = g.status === "succeeded" ? number.format(g.credits_charged) + " charged"
      : (g.status === "failed" || g.status === "canceled") ? "0 charged" : number.format(g.credits_held) + " held";
    field(card, "balance_after").textContent = number.format(g.balance_after);
    // Cards of other members' team generations have no cancel button.
    const actions = field(card, "actions");
    if (actions) actions.hidden = TERMINAL.includes(g.status);
    const error = field(card, "error");
    error.hidden = g.status !== "failed";
    if (g.status === "failed" && g.error) field(card, "error_message").textContent = window.PA.sentence(g.error.message || g.error.code);
    field(card, "canceled_note").hidden = g.status !== "canceled";
    // Succeeded with fewer outputs than asked (some could not be fetched):
    // charged for those that arrived only.
    const arrived = (g.outputs || []).length;
    const partial = g.status === "succeeded" && arrived < g.num_outputs;
    field(card, "partial_note").hidden = !partial;
    if (partial) {
      const why = g.error ? " (" + (g.error.message || g.error.code) + ")" : "";
      field(card, "partial_message").textContent = arrived + " of " + g.num_outputs + " outputs arrived" + why + ".";
    }
  }

  async function fetchGeneration(id) {
    const result = await window.PA.call("GET", "/v1/generations/" + encodeURIComponent(id));
    return result.ok ? result.data : null;
  }

  function buildCard(g) {
    const card = document.createElement("article");
    card.className = "gen-card";
    card.dataset.generationId = g.id;
    card.setAttribute("aria-label", g.model + " generation");
    card.innerHTML =
      '<header class="gen-head"><h3 class="gen-model"></h3><span class="status" data-field="status"></span></header>' +
      '<p class="gen-prompt"></p>' +
      '<div class="gen-live" aria-live="polite"><p class="queue" data-field="queue" hidden></p>' +
      '<div class="progress-wrap" data-field="progress" hidden><progress aria-label="Progress"></progress><span class="muted small">Generating…</span></div></div>' +
      '<div class="gen-outputs" data-field="outputs"></div>' +
      '<p class="gen-error" data-field="error" hidden><span data-field="error_message"></span> <strong>No credits were charged.</strong></p>' +
      '<p class="gen-canceled" data-field="canceled_note" hidden>Canceled. No credits were charged.</p>' +
      '<p class="gen-partial" data-field="partial_note" hidden><span data-field="partial_message"></span> <strong>Only those were charged; the rest went back to your balance.</strong></p>' +
      '<dl class="gen-facts"><div><dt>Outputs</dt><dd data-field="num_outputs"></dd></div><div><dt>Credits</dt><dd data-field="credits"></dd></div><div><dt>Balance after</dt><dd data-field="balance_after"></dd></div></dl>' +
      (g.can_cancel ? '<div class="gen-actions" data-field="actions"><form class="js-api" data-method="POST" data-success="generation"><button type="submit" class="button danger small">Cancel</button><p class="form-error" data-error-for="body" hidden></p></form></div>' : "");
    card.querySelector(".gen-model").textContent = g.model;
    card.querySelector(".gen-prompt").textContent = g.prompt;
    field(card, "num_outputs").textContent = String(g.num_outputs);
    const form = card.querySelector("form");
    if (form) form.dataset.url = "/v1/generations/" + encodeURIComponent(g.id) + "/cancel";
    return card;
  }

  async function onGeneration(event) {
    const gallery = document.querySelector("[data-gallery]");
    if (!gallery) return;
    let g = event.detail;
    let card = gallery.querySelector('[data-generation-id="' + CSS.escape(g.id) + '"]');
    if (!card) {
      // A generation from elsewhere (another tab, the API): show it on top.
      const full = await fetchGeneration(g.id);
      if (!full || gallery.querySelector('[data-generation-id="' + CSS.escape(g.id) + '"]')) return;
      const empty = gallery.querySelector("[data-empty]");
      if (empty) empty.remove();
      card = buildCard(full);
      gallery.prepend(card);
      g = full;
    }
    update(card, g);
    if (g.status === "succeeded") {
      const full = g.outputs ? g : await fetchGeneration(g.id);
      if (full) renderOutputs(card, full);
    }
  }

  async function resync() {
    const cards = document.querySelectorAll("[data-gallery] [data-generation-id]");
    for (const card of cards) {
      if (TERMINAL.includes(card.dataset.status)) continue;
      const g = await fetchGeneration(card.dataset.generationId);
      if (g) onGeneration({ detail: g });
    }
  }

  // The provider reports no percentage the page could trust: running jobs
  // show how long they have been running instead.
  function tick() {
    document.querySelectorAll('[data-status="running"] [data-field="elapsed"]').forEach(function (el) {
      const started = Date.parse(el.dataset.startedAt);
      if (Number.isNaN(started)) return;
      const seconds = Math.max(0, Math.round((Date.now() - started) / 1000));
      el.textContent = seconds < 60 ? seconds + " s" : Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
    });
  }
  setInterval(tick, 1000);
  // The server says how long a job had been running when it made the page
  // (its clock, not this browser's); count on from there.
  document.addEventListener("DOMContentLoaded", function () {
    const loaded = Date.now();
    document.querySelectorAll("[data-elapsed-base]").forEach(function (el) {
      const base = parseInt(el.dataset.elapsedBase, 10);
      if (!Number.isNaN(base)) el.dataset.startedAt = new Date(loaded - base * 1000).toISOString();
    });
    tick();
  });

  document.addEventListener("pa:generation", onGeneration);
  document.addEventListener("pa:resync", resync);
})();
