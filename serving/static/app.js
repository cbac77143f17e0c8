// The demo page: pick a model, upload or drop an image, show photo / overlay / mask and a legend.
"use strict";

const $ = (id) => document.getElementById(id);
let photoUrl = null;
let lastFile = null;  // re-segmented when the model or the opacity changes
const KEY_STORAGE = "sceneparse-api-key";

// API calls carry the key as X-API-Key: the gateway accepts the browser's Basic login on the page
// only, never on the API (a cross-site form could make the browser send Basic credentials, but
// not this header). The key lives in sessionStorage: this tab, until it is closed.
async function apiFetch(url, options = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  const headers = new Headers(options.headers || {});
  if (key) headers.set("X-API-Key", key);
  const response = await fetch(url, { ...options, headers, credentials: "omit" });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY_STORAGE);
    $("keyform").hidden = false;
    $("apikey").focus();
  }
  return response;
}

function setUpKeyForm() {
  $("keyform").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("apikey").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("apikey").value = "";
    $("keyform").hidden = true;
    setStatus("");
    loadModels();
  });
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status} ${body.error}: ${body.detail}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModels() {
  const response = await apiFetch("/v1/models");
  if (!response.ok) {
    setStatus(`Cannot list models: ${await errorText(response)}`, true);
    return;
  }
  const { models } = await response.json();
  const select = $("model");
  select.replaceChildren();
  for (const model of models) {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = `${model.name} v${model.version} (${model.dataset}, ${model.num_classes} classes, ${model.precision})`;
    option.selected = model.default;
    select.append(option);
  }
  if (!models.length) setStatus("No model is loaded yet.", true);
}

function showLegend(classes) {
  const items = classes.map((entry) => {
    const item = document.createElement("li");
    item.className = "legend-item";
    item.dataset.classId = entry.id;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = entry.hex;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = entry.name;
    const fraction = document.createElement("span");
    fraction.className = "fraction";
    fraction.textContent = `${(entry.fraction * 100).toFixed(1)}%`;
    item.append(swatch, name, fraction);
    return item;
  });
  $("legend").replaceChildren(...items);
}

async function segment(file) {
  if (!file) return;
  lastFile = file;
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(file);
  $("photo").src = photoUrl;
  setStatus(`Segmenting ${file.name}…`);
  const params = new URLSearchParams({ output: "json", alpha: $("alpha").value });
  if ($("model").value) params.set("model", $("model").value);
  params.append("png", "color");
  params.append("png", "overlay");
  const form = new FormData();
  form.append("image", file);
  const started = performance.now();
  let response;
  try {
    response = await apiFetch(`/v1/segment?${params}`, { method: "POST", body: form });
  } catch (error) {
    setStatus(`The request failed: ${error}`, true);
    return;
  }
  if (!response.ok) {
    setStatus(`Cannot segment ${file.name}: ${await errorText(response)}`, true);
    return;
  }
  const result = await response.json();
  $("mask").src = `data:image/png;base64,${result.png.color}`;
  $("overlay").src = `data:image/png;base64,${result.png.overlay}`;
  showLegend(result.classes);
  $("results").hidden = false;
  const ms = Math.round(performance.now() - started);
  setStatus(`${result.model} v${result.version} (${result.precision}): ${result.width}×${result.height}, ` +
            `${result.tiles} crops, ${ms} ms`);
}

function setUpDropzone() {
  const zone = $("dropzone");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.remove("over"); });
  }
  zone.addEventListener("drop", (event) => segment(event.dataTransfer.files[0]));
  $("file").addEventListener("change", (event) => segment(event.target.files[0]));
}

setUpKeyForm();
setUpDropzone();
$("model").addEventListener("change", () => segment(lastFile));
$("alpha").addEventListener("change", () => segment(lastFile));
loadModels();
