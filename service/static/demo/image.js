// The demo's image view: image completion with a 2-D regression model (dim_x 2 in GET /v1/models:
// pixel row and column in, intensity out). Pick one of the held-out digits shipped in digits.json,
// then reveal its pixels, by clicking them or by streaming random ones a few per post; after each
// post the page predicts all the pixels in one request and redraws the mean and the standard
// deviation, beside the digit with only its revealed pixels shown.
//
// The session maps the user's units: rows and columns 0..side-1, intensities 0..255 (the shift and
// scale of the training protocol, docs/MODEL.md section 10). For tests, #images carries
// data-session-id, data-revealed (pixels posted), data-state-bytes and data-busy.

import { ApiError } from "./api.js";
import { drawHistory } from "./history.js";
import { serialQueue, shuffled, sleep } from "./util.js";

const PIXELS_PER_POST = 8; // a streaming tick
const STREAM_DELAY_MS = 40;
const HIDDEN_RGB = [203, 217, 238]; // an unrevealed pixel of the digit
const INTENSITY = { shift: 127.5, scale: 255 }; // 0..255 -> [-0.5, 0.5]

const $ = (id) => document.getElementById(id);
const images = $("images");

// What the view shows; render() draws it.
const view = {
  api: null,
  started: false,
  digits: null, // digits.json: {side, digits: [{label, row, pixels}]}, pixels decoded to Uint8Array
  models: [], // the 2-D entries of GET /v1/models
  model: null, // the selected one
  sessionId: null,
  revealed: new Set(), // pixel indices (row-major) posted to the session
  prediction: null, // {mean, std}: one number per pixel, intensity units
  priorStd: 1, // the largest standard deviation of the model's prior: black in the std image
  info: null, // GET /v1/sessions/{id}
  history: [], // [revealed pixels, state_bytes] after every update
};

const enqueue = serialQueue(images, (error) => {
  const unauthorised = error instanceof ApiError && error.status === 401;
  $("image-error").textContent = `${error.message}${unauthorised ? " (enter the service's API key above)" : ""}`;
});

const isImageModel = (m) => m.session_kind === "regression" && m.dim_x === 2 && m.dim_y === 1;
const side = () => view.digits.side;
const digit = () => view.digits.digits[Number($("digit").value)];

// Every pixel's [row, column], row-major.
const grid = () => Array.from({ length: side() ** 2 }, (_, i) => [Math.floor(i / side()), i % side()]);

async function loadDigits() {
  const shipped = await (await fetch("/demo/digits.json")).json();
  const decode = (base64) => Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  view.digits = { ...shipped, digits: shipped.digits.map((d) => ({ ...d, pixels: decode(d.pixels) })) };
  $("digit").replaceChildren(
    ...view.digits.digits.map((d, i) => new Option(`${d.label} (MNIST row ${d.row.toLocaleString("en")})`, i)),
  );
}

// The served 2-D models, or a notice that there are none.
async function start() {
  $("image-error").textContent = "";
  if (!view.digits) await loadDigits();
  view.models = (await view.api.models()).models.filter(isImageModel);
  $("image-model").replaceChildren(
    ...view.models.map((m) => new Option(`${m.name}${m.default ? " (default)" : ""}`, m.name, m.default, m.default)),
  );
  const none = view.models.length === 0;
  $("image-none").hidden = !none;
  for (const id of ["image-model", "digit", "image-reset", "stream-count", "stream-pixels"]) $(id).disabled = none;
  if (none) {
    view.sessionId = null;
    view.prediction = null;
    render();
    return;
  }
  await newSession();
}

async function newSession() {
  const previous = view.sessionId;
  view.sessionId = null; // stops a running stream
  if (previous) await view.api.deleteSession(previous).catch(() => {}); // it would expire anyway
  view.model = view.models.find((m) => m.name === $("image-model").value);
  const last = side() - 1;
  const info = await view.api.createSession(view.model.name, {
    x_transform: { low: [0, 0], high: [last, last] },
    y_transform: INTENSITY,
  });
  Object.assign(view, { sessionId: info.session_id, revealed: new Set(), prediction: null, info: null, history: [] });
  $("image-error").textContent = "";
  await refresh(info);
}

// Predict every pixel in one request, then redraw (info: the session's, asked for unless given).
async function refresh(info = null) {
  const prediction = await view.api.predict(view.sessionId, grid());
  view.info = info || (await view.api.session(view.sessionId));
  view.prediction = {
    mean: prediction.mean.map((row) => row[0]),
    std: prediction.variance.map((row) => Math.sqrt(row[0])),
  };
  if (view.revealed.size === 0) view.priorStd = Math.max(...view.prediction.std);
  $("image-warnings").textContent = prediction.warnings.join("; ");
  view.history.push([view.info.num_points, view.info.state_bytes]);
  render();
}

// Post the digit's intensities at these pixels (those not yet revealed), then redraw.
async function reveal(sessionId, pixels) {
  if (view.sessionId !== sessionId) return; // the session was replaced while this waited
  const fresh = pixels.filter((p) => !view.revealed.has(p));
  if (!fresh.length) return;
  const values = digit().pixels;
  await view.api.addContext(
    sessionId,
    fresh.map((p) => [Math.floor(p / side()), p % side()]),
    fresh.map((p) => [values[p]]),
  );
  fresh.forEach((p) => view.revealed.add(p));
  await refresh();
}

// Reveal as many random hidden pixels as the count field says, a few per post.
async function stream() {
  const button = $("stream-pixels");
  button.disabled = true;
  try {
    const sessionId = view.sessionId;
    const hidden = [...Array(side() ** 2).keys()].filter((p) => !view.revealed.has(p));
    const chosen = shuffled(hidden).slice(0, Math.max(0, Math.floor(Number($("stream-count").value))));
    for (let i = 0; i < chosen.length; i += PIXELS_PER_POST) {
      if (view.sessionId !== sessionId) break; // reset, another digit or another model
      await enqueue(() => reveal(sessionId, chosen.slice(i, i + PIXELS_PER_POST)));
      await sleep(STREAM_DELAY_MS);
    }
  } finally {
    button.disabled = false;
  }
}

// ---- drawing -----------------------------------------------------------------------------------

// One image on a canvas of side x side pixels: rgb(i) gives pixel i's [r, g, b].
function paint(canvas, rgb) {
  const n = side();
  Object.assign(canvas, { width: n, height: n });
  const ctx = canvas.getContext("2d");
  const data = ctx.createImageData(n, n);
  for (let i = 0; i < n * n; i++) data.data.set([...rgb(i), 255], 4 * i);
  ctx.putImageData(data, 0, 0);
}

// Ink dark on white: intensity 255 is black.
const ink = (value) => {
  const level = 255 - Math.round(Math.min(255, Math.max(0, value)));
  return [level, level, level];
};

function render() {
  const p = view.prediction;
  const info = view.sessionId ? view.info : null;
  Object.assign(images.dataset, {
    sessionId: view.sessionId || "",
    revealed: info ? view.revealed.size : "",
    stateBytes: info ? info.state_bytes : "",
  });
  $("image-summary").hidden = info === null;
  if (!view.digits || !p) return;
  const values = digit().pixels;
  paint($("revealed-image"), (i) => (view.revealed.has(i) ? ink(values[i]) : HIDDEN_RGB));
  paint($("mean-image"), (i) => ink(p.mean[i]));
  paint($("std-image"), (i) => ink((255 * p.std[i]) / view.priorStd));
  $("revealed-count").textContent = view.revealed.size.toLocaleString("en");
  $("image-state-bytes").textContent = info.state_bytes.toLocaleString("en");
  $("image-state-note").textContent = drawHistory($("image-history"), view.history, "pixel", "revealed pixels");
}

// The pixel under a click on one of the images.
function pixelAt(event) {
  const canvas = event.currentTarget;
  const at = (offset, size) => Math.min(side() - 1, Math.max(0, Math.floor((offset / size) * side())));
  return at(event.offsetY, canvas.clientHeight) * side() + at(event.offsetX, canvas.clientWidth);
}

// ---- wiring ------------------------------------------------------------------------------------

// Show the view: the first time, find the served 2-D models and start a session.
export function showImageView(api) {
  view.api = api;
  if (!view.started) {
    view.started = true;
    enqueue(start);
  }
  render();
}

for (const id of ["revealed-image", "mean-image", "std-image"]) {
  $(id).addEventListener("click", (event) => {
    const sessionId = view.sessionId;
    if (sessionId && view.prediction) enqueue(() => reveal(sessionId, [pixelAt(event)]));
  });
}
$("image-reset").addEventListener("click", () => enqueue(newSession));
$("digit").addEventListener("change", () => enqueue(newSession));
$("image-model").addEventListener("change", () => enqueue(newSession));
$("stream-pixels").addEventListener("click", stream);
$("api-key").addEventListener("change", () => view.started && enqueue(start));
