// The page of `flowerfast serve`: describe the model, send each chosen photo to POST /predict,
// show its thumbnail with the top classes as bars, "unknown" when the model is not sure enough,
// and on request the photo's Grad-CAM heatmap from POST /cam (where the model looked). No framework, no build step, nothing loaded
// from elsewhere. Every text from a file name or the server goes in with textContent.
"use strict";

const KEY_STORAGE = "flowerfast-api-key";
const PARALLEL_REQUESTS = 8;  // the server batches concurrent requests together
let model = null;

function $(id) { return document.getElementById(id); }

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function apiHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { "X-API-Key": key } : {};
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (e) { /* not JSON */ }
  return `HTTP ${response.status} ${response.statusText}`;
}

function percent(p) { return `${(100 * p).toFixed(1)}%`; }

async function loadModel() {
  let response;
  try {
    response = await fetch("/model", { headers: apiHeaders() });
  } catch (e) {
    showPageError(`cannot reach the server: ${e.message}`);
    return;
  }
  if (response.status === 401) {
    const hadKey = sessionStorage.getItem(KEY_STORAGE) !== null;
    sessionStorage.removeItem(KEY_STORAGE);
    $("key-form").hidden = false;
    $("model-line").textContent = "this server needs an API key";
    const error = $("key-error");
    error.hidden = !hadKey;
    error.textContent = hadKey ? await errorText(response) : "";
    $("api-key").focus();
    return;
  }
  if (!response.ok) {
    showPageError(await errorText(response));
    return;
  }
  model = await response.json();
  showModel(model);
}

function showModel(m) {
  $("key-form").hidden = true;
  $("model-line").textContent = `${m.arch} · ${m.n_classes} classes · ${m.size} px`;
  $("model-arch").textContent = m.arch;
  $("model-size").textContent = `${m.size} × ${m.size} px`;
  $("model-accuracy").textContent = m.valid_accuracy === null ? "not recorded" :
    `${percent(m.valid_accuracy)}` + (m.epoch ? ` (epoch ${m.epoch} of ${m.epochs})` : "");
  $("model-file").textContent = m.run ? `${m.run}/${m.model}` : m.model;
  const classes = $("model-classes");
  classes.replaceChildren(...m.classes.map((c) => element("span", "chip", c)));
  $("limits").textContent = `up to ${m.limits.max_files} photos at a time, ${m.limits.max_file_mb} MB each` +
    (m.min_confidence === null ? "" : `; unknown below ${percent(m.min_confidence)} confidence`);
  $("model").hidden = false;
  $("drop").hidden = false;
}

function showPageError(message) {
  const node = $("page-error");
  node.textContent = message;
  node.hidden = false;
}

function newCard(file) {
  const card = element("article", "card");
  card.dataset.file = file.name;
  const img = element("img");
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  img.addEventListener("error", () => img.replaceWith(element("div", "noimage", "no preview")));
  img.addEventListener("load", () => URL.revokeObjectURL(img.src));
  const body = element("div", "body");
  body.append(element("div", "name", file.name), element("div", "status muted", "classifying…"));
  card.append(img, body);
  $("results").append(card);
  return card;
}

function showPrediction(card, prediction, file) {
  const body = card.querySelector(".body");
  card.querySelector(".status").remove();
  if (prediction.unknown) {
    card.classList.add("unknown");
    body.append(element("div", "predicted unknown", "unknown"));
    const guess = `best guess ${prediction.top_k[0].class} at ${percent(prediction.probability)}`;
    body.append(element("div", "muted why", prediction.labels ?
      `no class reaches its threshold: ${guess}` : prediction.unfamiliar ?
      `unlike the photos it was trained on: ${guess}` :
      `not sure enough: ${guess}, below ${percent(model.min_confidence)}`));
  } else if (prediction.labels) {  // a multi-label model: every class at or above its threshold
    body.append(element("div", "predicted", prediction.labels.map((l) => l.class).join(", ")));
  } else {
    body.append(element("div", "predicted", prediction.predicted));
  }
  for (const top of prediction.top_k) {
    const bar = element("div", "bar");
    bar.dataset.class = top.class;
    const fill = element("div", "fill");
    fill.style.width = percent(top.probability);
    const label = element("div", "label");
    label.append(element("span", "", top.class), element("span", "probability", percent(top.probability)));
    bar.append(fill, label);
    body.append(bar);
  }
  const button = element("button", "cam", "where it looked");
  button.type = "button";
  button.addEventListener("click", () => showHeatmap(card, file, button));
  body.append(button);
  card.classList.add("done");
}

async function showHeatmap(card, file, button) {
  button.disabled = true;
  button.textContent = "drawing…";
  const form = new FormData();
  form.append("files", file, file.name);
  try {
    const response = await fetch("/cam", { method: "POST", body: form, headers: apiHeaders() });
    if (!response.ok) {
      button.replaceWith(element("div", "status error", await errorText(response)));
      return;
    }
    const heat = element("img", "heatmap");
    heat.alt = `where the model looked in ${file.name}`;
    heat.src = URL.createObjectURL(await response.blob());
    heat.addEventListener("load", () => URL.revokeObjectURL(heat.src));
    const photo = card.querySelector("img, .noimage");
    photo.replaceWith(heat);
    button.remove();
  } catch (e) {
    button.replaceWith(element("div", "status error", `no answer from the server: ${e.message}`));
  }
}

function showFailure(card, message) {
  card.classList.add("failed", "done");
  const status = card.querySelector(".status");
  status.className = "status error";
  status.textContent = message;
}

async function classify(file, card) {
  const form = new FormData();
  form.append("files", file, file.name);
  const topK = Math.min(5, model.n_classes);
  try {
    const response = await fetch(`/predict?top_k=${topK}`, { method: "POST", body: form, headers: apiHeaders() });
    if (!response.ok) {
      showFailure(card, await errorText(response));
      if (response.status === 401) loadModel();
      return;
    }
    const [prediction] = await response.json();
    if (prediction.error) showFailure(card, prediction.error);
    else showPrediction(card, prediction, file);
  } catch (e) {
    showFailure(card, `no answer from the server: ${e.message}`);
  }
}

async function classifyAll(files) {
  if (!model) return;
  const queue = Array.from(files).map((file) => [file, newCard(file)]);
  const workers = Array.from({ length: Math.min(PARALLEL_REQUESTS, queue.length) }, async () => {
    while (queue.length) {
      const [file, card] = queue.shift();
      await classify(file, card);
    }
  });
  await Promise.all(workers);
}

function setUp() {
  const input = $("file-input");
  input.addEventListener("change", () => { classifyAll(input.files); input.value = ""; });
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => { event.preventDefault(); classifyAll(event.dataTransfer.files); });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value);
    $("api-key").value = "";
    loadModel();
  });
  loadModel();
}

document.addEventListener("DOMContentLoaded", setUp);
