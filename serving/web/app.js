// The page talks to TF Serving's REST API, on the origin that served it: model status
// (GET /v1/models/<name>[/labels/<label>]) and :predict on the `explain_images` signature. Behind a
// reverse proxy that forwards /v1/ to the official tensorflow_model_server it works unchanged for JPEG/PNG.
// A DICOM file first goes to POST /v1/dicom:to_png, a path of `pneumonia serve` (serving/rest.py), which
// answers the PNG that serving/dicom.py makes of it; that PNG then goes to :predict like any other, so the
// page's answer is the one `pneumonia predict` gives for the same DICOM.
"use strict";

const params = new URLSearchParams(window.location.search);
const SIGNATURE = "explain_images";
const MAX_FILE_BYTES = Number(params.get("max_mb") || 10) * 1024 * 1024;
const STATUS_POLL_MS = Number(params.get("poll_ms") || 5000);
// TF Serving's status API lists versions but not labels: these label names are probed (?labels=a,b adds more).
const LABELS = [...new Set(["stable", "canary", ...(params.get("labels") || "").split(",").filter(Boolean)])];
const SIGNATURES = { jpeg: [0xff, 0xd8, 0xff], png: [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a] };
const DICOM_PATH = "/v1/dicom:to_png";
const DICOM_MAGIC = [0x44, 0x49, 0x43, 0x4d]; // "DICM", after the 128-byte preamble of a DICOM Part 10 file
const DICOM_PREAMBLE_BYTES = 128;
const DICOM_NAME = /\.(dcm|dicom)$/i;
const OFFICIAL_SERVER_UNKNOWN_PATH = /^Malformed request: /;
const WINDOWING = {
  "voi lut": "the file's VOI LUT",
  window: "the file's window (centre/width)",
  percentile: "a 0.5-99.5 percentile window (the file has none)",
};

const elements = {
  modelName: document.getElementById("model-name"),
  target: document.getElementById("target"),
  serverStatus: document.getElementById("server-status"),
  dropZone: document.getElementById("drop-zone"),
  choose: document.getElementById("choose-files"),
  fileInput: document.getElementById("file-input"),
  results: document.getElementById("results"),
  template: document.getElementById("result-template"),
};
let served = { versions: [], labels: {} }; // what the last status answer said

class PageError extends Error {
  constructor(message, status = 0, reason = "") {
    super(message);
    this.status = status; // the HTTP status of a refused request, 0 otherwise
    this.reason = reason; // the server's own {"error": ...} line
  }
}

async function callApi(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new PageError(`The model server is unavailable (no answer from ${window.location.host}).`);
  }
  let body = {};
  try {
    body = await response.json();
  } catch (error) {
    // an answer without a JSON body: the HTTP status below says enough
  }
  if (!response.ok) {
    const unavailable = response.status === 502 || response.status === 503 || response.status === 504;
    throw new PageError(unavailable ? `The model server is unavailable (HTTP ${response.status}).`
      : `The server refused the request (HTTP ${response.status}): ${body.error || response.statusText}`,
    response.status, body.error || "");
  }
  return body;
}

function modelPath() {
  return `/v1/models/${encodeURIComponent(elements.modelName.value.trim() || "pneumonia")}`;
}

function availableVersions(status) {
  return status.model_version_status.filter((entry) => entry.state === "AVAILABLE")
    .map((entry) => Number(entry.version)).sort((a, b) => b - a);
}

async function refreshStatus() {
  try {
    const versions = availableVersions(await callApi(modelPath()));
    const labels = {};
    await Promise.all(LABELS.map(async (label) => {
      try {
        const [version] = availableVersions(await callApi(`${modelPath()}/labels/${encodeURIComponent(label)}`));
        if (version !== undefined) labels[label] = version;
      } catch (error) {
        // this label is not configured on the server
      }
    }));
    served = { versions, labels };
    elements.serverStatus.textContent = versions.length
      ? `Serving ${elements.modelName.value.trim()}: version${versions.length > 1 ? "s" : ""} ${versions.join(", ")}`
        + Object.entries(labels).map(([label, version]) => `; ${label} = ${version}`).join("")
      : "The model has no available version yet.";
    elements.serverStatus.dataset.state = versions.length ? "ok" : "empty";
  } catch (error) {
    served = { versions: [], labels: {} };
    elements.serverStatus.textContent = error.message;
    elements.serverStatus.dataset.state = "error";
  }
  updateTargetPicker();
  return served;
}

function updateTargetPicker() {
  const chosen = elements.target.value;
  const options = [["latest", served.versions.length ? `latest (version ${served.versions[0]})` : "latest"]];
  for (const version of served.versions) options.push([`version:${version}`, `version ${version}`]);
  for (const [label, version] of Object.entries(served.labels)) {
    options.push([`label:${label}`, `label ${label} (version ${version})`]);
  }
  const current = [...elements.target.options].map((option) => `${option.value}=${option.text}`).join("|");
  if (current === options.map(([value, text]) => `${value}=${text}`).join("|")) return;
  elements.target.replaceChildren(...options.map(([value, text]) => new Option(text, value)));
  elements.target.value = options.some(([value]) => value === chosen) ? chosen : "latest";
}

// Which version answers: resolved from a fresh status call, then asked for by number, because a REST
// :predict answer does not say which version computed it.
async function resolveTarget() {
  const { versions, labels } = await refreshStatus();
  if (elements.serverStatus.dataset.state === "error") throw new PageError(elements.serverStatus.textContent);
  const [kind, name] = elements.target.value.split(/:(.*)/s);
  if (kind === "label") {
    if (!(name in labels)) throw new PageError(`The server no longer has the version label "${name}".`);
    return { version: labels[name], label: name };
  }
  if (kind === "version") {
    if (!versions.includes(Number(name))) throw new PageError(`Version ${name} is no longer served.`);
    return { version: Number(name), label: "" };
  }
  if (!versions.length) throw new PageError("The model has no available version yet.");
  return { version: versions[0], label: "" };
}

// What the model is sent for a file: its own bytes for a JPEG or PNG; for a DICOM file the server's PNG
// of it, with the DICOM facts the card shows.
async function modelInput(file) {
  if (file.size > MAX_FILE_BYTES) {
    throw new PageError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB, over the size cap of `
      + `${(MAX_FILE_BYTES / 1048576).toFixed(0)} MB.`);
  }
  const bytes = new Uint8Array(await file.arrayBuffer());
  const starts = (magic, offset = 0) => magic.every((byte, i) => bytes[offset + i] === byte);
  if (starts(DICOM_MAGIC, DICOM_PREAMBLE_BYTES) || DICOM_NAME.test(file.name)) return dicomToPng(file, bytes);
  if (!Object.values(SIGNATURES).some((magic) => starts(magic))) {
    throw new PageError(`${file.name} is not an image: expected JPEG, PNG or DICOM bytes.`);
  }
  return { bytes, image: file, dicom: null };
}

async function dicomToPng(file, bytes) {
  let answer;
  try {
    answer = await callApi(DICOM_PATH, { method: "POST", headers: { "Content-Type": "application/dicom" }, body: bytes });
  } catch (error) {
    // tensorflow_model_server answers a /v1/ path it does not know with 400 "Malformed request: POST <path>";
    // a proxy without the route answers 404 or 405
    if ([404, 405].includes(error.status) || OFFICIAL_SERVER_UNKNOWN_PATH.test(error.reason)) {
      throw new PageError(`This server does not convert DICOM: ${DICOM_PATH} comes with \`pneumonia serve\` `
        + "(serving/README.md, The web page). Send JPEG or PNG, or score DICOM with `pneumonia predict`.");
    }
    if (error.status === 400) throw new PageError(`${file.name} was not scored: ${error.reason}`);
    throw error;
  }
  const png = Uint8Array.from(window.atob(answer.png.b64), (character) => character.charCodeAt(0));
  return {
    bytes: png,
    image: new Blob([png], { type: "image/png" }),
    dicom: { viewPosition: answer.view_position, windowing: answer.windowing },
  };
}

function base64(bytes) {
  let binary = "";
  for (let start = 0; start < bytes.length; start += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(start, start + 0x8000));
  }
  return window.btoa(binary);
}

async function explain(bytes) {
  const target = await resolveTarget();
  const body = JSON.stringify({ signature_name: SIGNATURE, instances: [{ b64: base64(bytes) }] });
  const answer = await callApi(`${modelPath()}/versions/${target.version}:predict`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body,
  });
  return { prediction: answer.predictions[0], ...target };
}

// A blue-to-red ramp; the overlay's own alpha is the value, so regions the model did not use stay clear.
function heatColour(value) {
  const stops = [[0, [49, 54, 149]], [0.35, [116, 173, 209]], [0.6, [254, 224, 144]], [0.8, [244, 109, 67]],
    [1, [165, 0, 38]]];
  const upper = stops.findIndex(([at]) => value <= at);
  if (upper <= 0) return stops[upper === 0 ? 0 : stops.length - 1][1];
  const [from, low] = stops[upper - 1];
  const [to, high] = stops[upper];
  const t = (value - from) / (to - from);
  return low.map((channel, i) => Math.round(channel + t * (high[i] - channel)));
}

function drawHeatmap(canvas, heatmap, width, height) {
  const rows = heatmap.length;
  const columns = heatmap[0].length;
  const grid = document.createElement("canvas");
  grid.width = columns;
  grid.height = rows;
  const gridContext = grid.getContext("2d");
  const pixels = gridContext.createImageData(columns, rows);
  heatmap.flat().forEach((value, i) => {
    const clamped = Math.min(Math.max(value, 0), 1);
    pixels.data.set([...heatColour(clamped), Math.round(255 * clamped)], 4 * i);
  });
  gridContext.putImageData(pixels, 0, 0);
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = true; // bilinear, as the model's own resizing
  context.clearRect(0, 0, width, height);
  context.drawImage(grid, 0, 0, width, height);
  canvas.dataset.drawn = "true";
}

function showResult(card, file, input, answer) {
  const { prediction, version, label } = answer;
  const part = (selector) => card.querySelector(selector);
  const image = part(".xray");
  const canvas = part(".heatmap");
  const method = part(".heatmap-method");
  const opacity = part(".opacity");
  const redraw = () => drawHeatmap(canvas, prediction[method.value], image.naturalWidth, image.naturalHeight);
  image.alt = `Uploaded image ${file.name}`;
  image.addEventListener("load", redraw, { once: true });
  image.src = URL.createObjectURL(input.image);
  method.addEventListener("change", redraw);
  opacity.setAttribute("aria-label", `Heatmap opacity for ${file.name}`);
  method.setAttribute("aria-label", `Heatmap method for ${file.name}`);
  const applyOpacity = () => { canvas.style.opacity = String(opacity.value / 100); };
  opacity.addEventListener("input", applyOpacity);
  applyOpacity();

  const probability = prediction.probability;
  const threshold = prediction.threshold;
  part(".probability-value").textContent = probability.toFixed(4);
  part(".probability-value").dataset.probability = String(probability);
  const bar = part(".bar");
  bar.setAttribute("aria-valuenow", String(probability));
  bar.setAttribute("aria-valuetext", `probability ${probability.toFixed(4)}, threshold ${threshold.toFixed(4)}`);
  part(".fill").style.width = `${(100 * probability).toFixed(2)}%`;
  part(".threshold-mark").style.left = `${(100 * threshold).toFixed(2)}%`;
  part(".threshold-text").textContent = `threshold ${threshold.toFixed(4)}`;
  part(".class-name").textContent = prediction.label;

  const outOfDistribution = prediction.in_distribution === false;
  const warning = part(".ood-warning");
  warning.hidden = !outOfDistribution;
  part(".class-line").hidden = outOfDistribution;
  if (outOfDistribution) {
    warning.textContent = `Not like the X-rays the model was trained on (out-of-distribution score `
      + `${prediction.ood_score.toFixed(1)} > ${prediction.ood_threshold.toFixed(1)}): no class is given. `
      + `The probability below is not reliable for this image.`;
  }
  card.dataset.state = outOfDistribution ? "ood" : "done";
  part(".provenance").textContent = `Answered by ${elements.modelName.value.trim()}, version ${version}`
    + (label ? `, label ${label}` : "");
  part(".provenance").dataset.version = String(version);
  if (input.dicom) {
    const { viewPosition, windowing } = input.dicom;
    part(".dicom-facts").textContent = `DICOM, converted by the server: view position `
      + `${viewPosition === "unknown" ? "not recorded" : viewPosition}; 8 bits from ${WINDOWING[windowing] || windowing}.`;
    part(".dicom-facts").dataset.viewPosition = viewPosition;
    part(".dicom-facts").hidden = false;
  }
  part(".answer").hidden = false;
}

function showError(card, error) {
  const message = card.querySelector(".message");
  message.textContent = error instanceof PageError ? error.message : `Unexpected error: ${error.message}`;
  message.hidden = false;
  card.dataset.state = "error";
}

async function handleFiles(files) {
  for (const file of files) {
    const card = elements.template.content.firstElementChild.cloneNode(true);
    card.querySelector(".file-name").textContent = file.name;
    elements.results.prepend(card);
    try {
      const input = await modelInput(file);
      showResult(card, file, input, await explain(input.bytes));
    } catch (error) {
      showError(card, error);
    }
  }
}

function setUp() {
  elements.modelName.value = params.get("model") || elements.modelName.value;
  document.getElementById("size-cap").textContent = `${(MAX_FILE_BYTES / 1048576).toFixed(0)} MB`;
  elements.choose.addEventListener("click", () => elements.fileInput.click());
  elements.fileInput.addEventListener("change", () => {
    handleFiles([...elements.fileInput.files]).finally(() => { elements.fileInput.value = ""; });
  });
  for (const name of ["dragenter", "dragover"]) {
    elements.dropZone.addEventListener(name, (event) => {
      event.preventDefault();
      elements.dropZone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    elements.dropZone.addEventListener(name, () => elements.dropZone.classList.remove("dragging"));
  }
  elements.dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    handleFiles([...event.dataTransfer.files]);
  });
  elements.modelName.addEventListener("change", refreshStatus);
  refreshStatus();
  window.setInterval(refreshStatus, STATUS_POLL_MS);
}

setUp();
