// The Create form: the cost (credits x outputs) and the balance after it are
// shown before submitting; the server's quote confirms them (plan, caps).
(function () {
  "use strict";
  let form, available, quoteTimer, uploadedFor = null;
  const number = new Intl.NumberFormat("en-US");

  function selected() { return form.querySelector('input[name="model"]:checked'); }

  function paramInput(name, spec) {
    const wrap = document.createElement("div");
    wrap.className = "field";
    const id = "param-" + name;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = name.replace(/_/g, " ").replace(/^./, function (c) { return c.toUpperCase(); });
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
    input.setAttribute("aria-describedby", "err-params-" + name);
    const error = document.createElement("p");
    error.className = "field-error";
    error.id = "err-params-" + name;
    error.dataset.errorFor = "params." + name;
    error.hidden = true;
    if (spec.type === "boolean") wrap.append(input, label, error); else wrap.append(label, input, error);
    return wrap;
  }

  function onModel() {
    const model = selected();
    const area = form.querySelector("[data-params-area]");
    area.replaceChildren();
    if (!model) { refresh(); return; }
    const outputs = form.querySelector("#num_outputs");
    outputs.max = model.dataset.maxOutputs;
    if (Number(outputs.value) > Number(model.dataset.maxOutputs)) outputs.value = model.dataset.maxOutputs;
    form.querySelector("[data-max-outputs]").textContent = model.dataset.maxOutputs;
    const params = JSON.parse(model.dataset.params || "{}");
    Object.keys(params).forEach(function (name) { area.appendChild(paramInput(name, params[name])); });
    const image = model.dataset.image;
    const imageField = form.querySelector("[data-image-field]");
    imageField.hidden = image === "none";
    form.querySelector("[data-image-need]").textContent = image === "required" ? "(required)" : "(optional)";
    refresh();
  }

  function body() {
    const model = selected();
    const request = {
      model: model ? model.value : "",
      prompt: form.prompt.value,
      num_outputs: Number(form.num_outputs.value) || 1,
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
    if (!model) { cost.textContent = "—"; after.textContent = "—"; return; }
    const outputs = Math.max(1, Number(form.num_outputs.value) || 1);
    const credits = Number(model.dataset.credits) * outputs;
    cost.textContent = number.format(credits) + " credit" + (credits === 1 ? "" : "s") +
      " (" + number.format(Number(model.dataset.credits)) + " × " + outputs + ")";
    after.textContent = number.format(available - credits);
    const short = credits > available;
    after.classList.toggle("negative", short);
    note.hidden = !short;
    note.textContent = short ? "Not enough credits for this request." : "";
    form.querySelector("[data-topup]").hidden = !short;
    clearTimeout(quoteTimer);
    quoteTimer = setTimeout(quote, 250);
  }

  async function quote() {
    const request = body();
    if (!request.model) return;
    if (!request.prompt.trim()) request.prompt = "quote";
    const result = await window.PA.call("POST", "/v1/quotes", request);
    if (!result.ok) return;
    const q = result.data;
    form.querySelector("[data-cost]").dataset.quoted = String(q.credits);
    form.querySelector("[data-after]").textContent = number.format(q.available_after);
    const note = form.querySelector("[data-quote-note]");
    note.hidden = q.allowed;
    if (!q.allowed) {
      const reason = q.reason || "this request cannot run now";
      note.textContent = reason.charAt(0).toUpperCase() + reason.slice(1) + ".";
    }
    form.querySelector("[data-topup]").hidden = q.available_after >= 0;
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
    button.disabled = true;
    button.textContent = "Submitting…";
    try {
      if (!(await upload())) return;
      const key = (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Date.now());
      const result = await window.PA.call("POST", "/v1/generations", body(), { "Idempotency-Key": key });
      if (!result.ok) { window.PA.showErrors(form, result); return; }
      window.PA.flash("Queued: " + number.format(result.data.credits_held) + " credits held until it finishes.");
      window.location.assign("/generations");
    } finally {
      button.disabled = false;
      button.textContent = "Generate";
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    form = document.getElementById("create-form");
    if (!form) return;
    available = Number(form.dataset.available);
    form.addEventListener("change", function (event) {
      if (event.target.name === "model") onModel();
      else if (event.target.name === "image") { form.upload_id.value = ""; uploadedFor = null; }
      else refresh();
    });
    form.addEventListener("input", function (event) { if (event.target.name === "num_outputs") refresh(); });
    form.addEventListener("submit", submit);
    document.addEventListener("pa:balance", function (event) { available = event.detail.available; refresh(); });
    onModel();
  });
})();
