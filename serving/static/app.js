// The demo page: pick a model, upload or drop an image, show photo / overlay / mask / confidence and a
// legend whose entries hide and show classes.
//
// One request per image and model: POST /v1/segment?output=json&png=label&png=confidence. The mask, the
// overlay and the confidence view are drawn here from that label map, so hiding a class or moving the
// opacity slider re-renders at once without running the model again. The drawing follows the
// gateway's own rendering exactly (serving/rendering.py; tests/serving/test_web_page.py compares them
// pixel for pixel): a hidden class is transparent in the mask, unpainted in the overlay and 0 in the
// confidence view, as with the API's `classes` parameter.
"use strict";

const $ = (id) => document.getElementById(id);
let photoUrl = null;
let lastFile = null;  // re-segmented when the model changes
let current = null;  // the last answer, decoded: {width, height, label, confidence, photo, colors}
const hidden = new Set();  // class ids the legend has hidden
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
    item.tabIndex = 0;
    item.setAttribute("role", "button");
    item.setAttribute("aria-pressed", "true");
    item.title = "click to hide or show this class";
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
    const toggle = () => toggleClass(entry.id, item);
    item.addEventListener("click", toggle);
    item.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); toggle(); }
    });
    return item;
  });
  $("legend").replaceChildren(...items);
}

function toggleClass(id, item) {
  if (hidden.has(id)) hidden.delete(id); else hidden.add(id);
  item.classList.toggle("hidden", hidden.has(id));
  item.setAttribute("aria-pressed", String(!hidden.has(id)));
  $("show-all").hidden = hidden.size === 0;
  render();
}

function showAll() {
  hidden.clear();
  for (const item of document.querySelectorAll("#legend .legend-item")) {
    item.classList.remove("hidden");
    item.setAttribute("aria-pressed", "true");
  }
  $("show-all").hidden = true;
  render();
}

// The RGBA pixels of an image (a data: URL or the photo's object URL), as the canvas decodes them.
async function pixelsOf(src) {
  const image = new Image();
  image.src = src;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(image, 0, 0);
  return context.getImageData(0, 0, canvas.width, canvas.height);
}

// numpy's rint: halves go to the even neighbour (Math.round would take them up).
function roundHalfEven(value) {
  const floor = Math.floor(value);
  const rest = value - floor;
  if (rest > 0.5) return floor + 1;
  if (rest < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

function putPixels(id, pixels) {
  const canvas = document.createElement("canvas");
  canvas.width = pixels.width;
  canvas.height = pixels.height;
  canvas.getContext("2d").putImageData(pixels, 0, 0);
  $(id).src = canvas.toDataURL("image/png");
}

// Mask, overlay and confidence from the label map, the photo and the hidden classes.
function render() {
  if (!current) return;
  const { width, height, label, confidence, photo, colors } = current;
  const alpha = parseFloat($("alpha").value);
  // The gateway blends in float32: (1 - alpha) * photo + alpha * colour, then rint.
  const keep = Math.fround(1 - alpha);
  const paint = Math.fround(alpha);
  const mask = new ImageData(width, height);
  const overlay = new ImageData(width, height);
  const sure = new ImageData(width, height);
  for (let i = 0; i < width * height * 4; i += 4) {
    const id = label.data[i];
    const shown = !hidden.has(id);
    const color = colors.get(id) || [0, 0, 0];
    const level = shown ? confidence.data[i] : 0;
    sure.data.set([level, level, level, 255], i);
    if (!shown) {
      mask.data.set([0, 0, 0, 0], i);
      overlay.data.set([photo.data[i], photo.data[i + 1], photo.data[i + 2], 255], i);
      continue;
    }
    mask.data.set([color[0], color[1], color[2], 255], i);
    for (let c = 0; c < 3; c += 1) {
      const blended = Math.fround(Math.fround(keep * photo.data[i + c]) + Math.fround(paint * color[c]));
      overlay.data[i + c] = Math.min(255, Math.max(0, roundHalfEven(blended)));
    }
    overlay.data[i + 3] = 255;
  }
  putPixels("mask", mask);
  putPixels("overlay", overlay);
  putPixels("confidence", sure);
}

async function segment(file) {
  if (!file) return;
  lastFile = file;
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = URL.createObjectURL(file);
  $("photo").src = photoUrl;
  setStatus(`Segmenting ${file.name}…`);
  const params = new URLSearchParams({ output: "json" });
  if ($("model").value) params.set("model", $("model").value);
  params.append("png", "label");
  params.append("png", "confidence");
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
  let label, confidence, photo;
  try {
    [label, confidence, photo] = await Promise.all([
      pixelsOf(`data:image/png;base64,${result.png.label}`),
      pixelsOf(`data:image/png;base64,${result.png.confidence}`),
      pixelsOf(photoUrl),
    ]);
  } catch (error) {
    setStatus(`Cannot show the answer for ${file.name}: ${error}`, true);
    return;
  }
  if (photo.width !== label.width || photo.height !== label.height) {
    // The browser did not orient the photo as the gateway did (EXIF): show the mask only.
    photo = new ImageData(label.width, label.height);
  }
  const colors = new Map(result.classes.map((entry) => [entry.id, entry.color]));
  current = { width: result.width, height: result.height, label, confidence, photo, colors };
  hidden.clear();
  $("show-all").hidden = true;
  showLegend(result.classes);
  render();
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
$("alpha").addEventListener("input", render);  // drawn here: no request
$("show-all").addEventListener("click", showAll);
loadModels();
