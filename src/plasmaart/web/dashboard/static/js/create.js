// The Create form: the cost (credits x outputs) and the balance after it are
// shown before submitting; the server's quote confirms them (plan, caps).
(function () {
  "use strict";
  let form, available, quoteTimer, uploadedFor = null, readOnly = false, submitting = false, quoteSeq = 0;
  const number = new Intl.NumberFormat("en-US");

  function selected() { return form.querySelector('input[name="model"]:checked'); }

  function paramInput(name, spec) {
    const wrap = document.createElement("div");
    wrap.className = "field";
    const id = "param-" + name;
    const label = document.createElement("label");
    label.htmlFor = id;
    // The catalog gives every parameter a label and one sentence of help.
    label.textContent = spec.label || name.replace(/_/g, " ").replace(/^./, function (c) { return c.toUpperCase(); });
    let input;
    if (spec.enum) {
      input = document.createElement("select");
      spec.enum.forEach(function (value) {
        const option = document.createElement("option");
        option.value = String(value);
        option.textContent = String(value);
        if (spec.default === value) option.selected = true;
        input.appendChild(option);
      });
    } else if (spec.type === "boolean") {
      wrap.className = "field check";
      input = document.createElement("input");
      input.type = "checkbox";
      input.checked = spec.default === true;
    } else {
      input = document.createElement("input");
      input.type = spec.type === "string" ? "text" : "number";
      if (spec.type !== "string") {
        input.inputMode = spec.type === "integer" ? "numeric" : "decimal";
        if (spec.minimum !== undefined) input.min = spec.minimum;
        if (spec.maximum !== undefined) input.max = spec.maximum;
        input.step = spec.type === "integer" ? "1" : "any";
      }
      if (spec.max_length) input.maxLength = spec.max_length;
      input.placeholder = spec.default !== undefined ? String(spec.default) : "optional";
    }
    input.id = id;
    input.dataset.param = name;
    input.name = "params." + name;
    input.dataset.paramType = spec.type;
    const help = document.createElement("p");
    help.className = "hint";
    help.id = "help-params-" + name;
    help.textContent = spec.help || "";
    help.hidden = !spec.help;
    input.setAttribute("aria-describedby", (spec.help ? help.id + " " : "") + "err-params-" + name);
    const error = document.createElement("p");
    error.className = "field-error";
    error.id = "err-params-" + name;
    error.dataset.errorFor = "params." + name;
    error.hidden = true;
    if (spec.type === "boolean") wrap.append(input, label, help, error); else wrap.append(label, input, help, error);
    return wrap;
  }

  function onModel() {
    const model = selected();
    const area = form.querySelector("[data-params-area]");
    area.replaceChildren();
    if (!model) { refresh(); return; }
    // The outputs field follows the chosen model: its limit, its hint, and
    // the value, clamped so that the price shown is the price charged.
    const most = maxOutputs();
    const outputs = form.querySelector("#num_outputs");
    outputs.max = String(most);
    outputs.value = String(outputCount());
    form.querySelector("[data-outputs-hint]").textContent = most === 1
      ? "One output per request with this model."
      : "Up to " + most + " with this model.";
    const params = JSON.parse(model.dataset.params || "{}");
    Object.keys(params).forEach(function (name) { area.appendChild(paramInput(name, params[name])); });
    const image = model.dataset.image;
    const imageField = form.querySelector("[data-image-field]");
    imageField.hidden = image === "none";
    form.querySelector("[data-image-need]").textContent = image === "required" ? "(required)" : "(optional)";
    refresh();
  }

  function maxOutputs() {
    const model = selected();
    return model ? Math.max(1, Number(model.dataset.maxOutputs) || 1) : 1;
  }

  // What the form asks for: a whole number between 1 and the model's limit.
  function outputCount() {
    const typed = Math.floor(Number(form.num_outputs.value) || 1);
    return Math.min(maxOutputs(), Math.max(1, typed));
  }

  function body() {
    const model = selected();
    const request = {
      model: model ? model.value : "",
      prompt: form.prompt.value,
      num_outputs: outputCount(),
      params: {}
    };
    form.querySelectorAll("[data-param]").forEach(function (input) {
      const type = input.dataset.paramType;
      if (type === "boolean") { request.params[input.dataset.param] = input.checked; return; }
      const raw = input.value.trim();
      if (raw === "") return;
      request.params[input.dataset.param] = type === "integer" || type === "number" ? Number(raw) : raw;
    });
    const sandbox = {};
    if (form.sandbox_delay && form.sandbox_delay.value.trim() !== "") sandbox.delay_s = Number(form.sandbox_delay.value);
    if (form.sandbox_fail && form.sandbox_fail.checked) sandbox.fail = true;
    if (Object.keys(sandbox).length) request.params.sandbox = sandbox;
    if (form.upload_id.value) request.upload_id = form.upload_id.value;
    if (form.team_id && form.team_id.value) request.team_id = form.team_id.value;
    return request;
  }

  // At once from the catalog; then the server's quote says whether it may run.
  function refresh() {
    const model = selected();
    const cost = form.querySelector("[data-cost]");
    const after = form.querySelector("[data-after]");
    const note = form.querySelector("[data-quote-note]");
    if (!model) { cost.textContent = "—"; after.textContent = "—"; showShort(0); return; }
    const outputs = outputCount();
    const each = Number(model.dataset.credits);
    const credits = each * outputs;
    cost.textContent = window.PA.credits(credits) + (outputs > 1 ? " (" + number.format(each) + " × " + outputs + ")" : "");
    // Never a negative balance: short, the line is hidden and says nothing.
    after.textContent = credits > available ? "—" : number.format(available - credits);
    note.hidden = true;
    note.textContent = "";
    showShort(credits - available);
    quoteSeq += 1;
    clearTimeout(quoteTimer);
    quoteTimer = setTimeout(quote, 250);
  }

  // Too few credits: no negative balance, Generate disabled, and one
  // message saying how many more are needed and where to get them.
  function showShort(missing) {
    const short = missing > 0;
    form.querySelector("[data-after-line]").hidden = short;
    form.querySelector("[data-short]").hidden = !short;
    form.querySelector("[data-short-credits]").textContent = short
      ? number.format(missing) + " more credit" + (missing === 1 ? "" : "s") : "";
    const button = form.querySelector("[data-submit]");
    if (readOnly) return;
    button.disabled = short || submitting;
    if (short) button.setAttribute("aria-describedby", "short-hint");
    else button.removeAttribute("aria-describedby");
  }

  async function quote() {
    const request = body();
    if (!request.model) return;
    if (!request.prompt.trim()) request.prompt = "quote";
    const seq = quoteSeq;
    const result = await window.PA.call("POST", "/v1/quotes", request);
    // A later change has asked again: this answer is for a request no longer shown.
    if (!result.ok || seq !== quoteSeq) return;
    const q = result.data;
    const cost = form.querySelector("[data-cost]");
    cost.dataset.quoted = String(q.credits);
    const each = Number(selected().dataset.credits);
    cost.textContent = window.PA.credits(q.credits) +
      (request.num_outputs > 1 ? " (" + number.format(each) + " × " + request.num_outputs + ")" : "");
    form.querySelector("[data-after]").textContent = q.available_after < 0 ? "—" : number.format(q.available_after);
    showShort(q.credits - q.available);
    // The shortfall has its own message above; any other refusal (a full
    // queue, a plan without the model) is said here, once.
    const note = form.querySelector("[data-quote-note]");
    const other = !q.allowed && q.credits <= q.available;
    note.hidden = !other;
    note.textContent = other ? window.PA.sentence(q.reason || "this request cannot run now") : "";
  }

  async function upload() {
    const file = form.image.files[0];
    if (!file) return true;
    if (uploadedFor === file) return true;
    const data = new FormData();
    data.append("file", file);
    const result = await window.PA.call("POST", "/v1/uploads", data);
    if (!result.ok) {
      if (result.data && Array.isArray(result.data.errors)) result.data.errors.forEach(function (e) { e.field = "upload_id"; });
      else if (result.data) result.data.errors = [{ field: "upload_id", message: result.data.detail || "Upload failed" }];
      window.PA.showErrors(form, result);
      return false;
    }
    form.upload_id.value = result.data.id;
    uploadedFor = file;
    const preview = form.querySelector("[data-upload-preview]");
    preview.src = result.data.url;
    preview.hidden = false;
    return true;
  }

  async function submit(event) {
    event.preventDefault();
    const button = form.querySelector("[data-submit]");
    window.PA.clearErrors(form);
    if (!selected()) {
      window.PA.showErrors(form, { data: { errors: [{ field: "model", message: "Choose a model." }] } });
      return;
    }
    submitting = true;
    button.disabled = true;
    button.textContent = "Submitting…";
    try {
      if (!(await upload())) return;
      const key = (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Date.now());
      const result = await window.PA.call("POST", "/v1/generations", body(), { "Idempotency-Key": key });
      if (!result.ok) {
        const problem = result.data || {};
        if (problem.code === "insufficient_credits" && typeof problem.available === "number") {
          // The balance moved since the page loaded: the shortfall message
          // says it, once, instead of a second copy in the form's error.
          if (!form.team_id || !form.team_id.value) available = problem.available;
          return;
        }
        window.PA.showErrors(form, result);
        return;
      }
      window.PA.flash("Queued: " + window.PA.credits(result.data.credits_held) + " held until it finishes.");
      window.location.assign("/generations");
    } finally {
      submitting = false;
      button.textContent = "Generate";
      refresh();
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    form = document.getElementById("create-form");
    if (!form) return;
    available = Number(form.dataset.available);
    readOnly = form.querySelector("[data-submit]").disabled;
    form.addEventListener("change", function (event) {
      if (event.target.name === "model") onModel();
      else if (event.target.name === "image") { form.upload_id.value = ""; uploadedFor = null; }
      else refresh();
    });
    form.addEventListener("input", function (event) { if (event.target.name === "num_outputs") refresh(); });
    // Leaving the field settles it on what is asked for and priced.
    form.num_outputs.addEventListener("change", function () { form.num_outputs.value = String(outputCount()); });
    form.addEventListener("submit", submit);
    document.addEventListener("pa:balance", function (event) { available = event.detail.available; refresh(); });
    onModel();
  });
})();
