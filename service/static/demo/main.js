// The /demo page: one session on the service; clicks and streamed GP draws are posted as context
// points, and each update redraws the predictive mean ± 2σ, the model's joint sample paths (when it
// can sample) and the session's state size.
//
// For tests and the curious, the plot canvas carries what it shows as data attributes:
// data-session-id, data-num-points, data-state-bytes, data-band-points (grid points of the ±2σ band
// drawn), data-sample-paths (joint sample paths drawn) and data-busy ("true" while requests run).

import { Api, ApiError } from "./api.js";
import { Chart } from "./chart.js";
import { normal, rbfDraw } from "./gp.js";

const GRID_SIZE = 151; // prediction grid over the model's input range
const NUM_SAMPLES = 3; // joint sample paths to draw
const Y_RANGE = [-3, 3];
const STREAM_POINTS = 25;
const STREAM_DELAY_MS = 60;
const NOISE_STD = 0.02; // observation noise of the streamed draws, as in training (model/data/gp.py)
const SAMPLE_COLOURS = ["#e4572e", "#17a398", "#9b5de5"];

const $ = (id) => document.getElementById(id);
const plotCanvas = $("plot");
const api = new Api(() => $("api-key").value.trim());

// What the page shows; render() draws it.
const view = {
  models: [], // GET /v1/models
  model: null, // the selected entry of models
  sessionId: null,
  seed: 0, // of the joint samples: fixed per session, so the paths keep their character between redraws
  canSample: true, // false once the model has refused a sampling request
  points: { x: [], y: [] },
  truth: null, // {x, y}: the streamed GP draw
  prediction: null, // {grid, mean, std, samples}
  info: null, // GET /v1/sessions/{id}
  history: [], // [num_points, state_bytes] after every update
};

// Requests run one at a time, in order: a click during a stream lands between two streamed points.
let queue = Promise.resolve();
let pending = 0;

function enqueue(task) {
  pending += 1;
  plotCanvas.dataset.busy = "true";
  queue = queue
    .then(task)
    .catch(showError)
    .finally(() => {
      pending -= 1;
      if (pending === 0) plotCanvas.dataset.busy = "false";
    });
  return queue;
}

function showError(error) {
  const hint = error instanceof ApiError && error.status === 401 ? " (enter the service's API key above)" : "";
  $("error").textContent = `${error.message}${hint}`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const linspace = (low, high, n) => Array.from({ length: n }, (_, i) => low + ((high - low) * i) / (n - 1));
const firstColumn = (rows) => rows.map((row) => row[0]);

function shuffled(items) {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

// ---- talking to the service --------------------------------------------------------------------

async function loadModels() {
  const listing = await api.models();
  view.models = listing.models;
  $("model").replaceChildren(
    ...listing.models.map((m) => new Option(`${m.name}${m.default ? " (default)" : ""}`, m.name, m.default, m.default)),
  );
}

async function newSession() {
  const previous = view.sessionId;
  view.sessionId = null; // stops a running stream
  if (previous) await api.deleteSession(previous).catch(() => {}); // it would expire anyway
  view.model = view.models.find((m) => m.name === $("model").value);
  const info = await api.createSession(view.model.name);
  Object.assign(view, {
    sessionId: info.session_id,
    seed: Math.floor(Math.random() * 2 ** 31),
    canSample: true,
    points: { x: [], y: [] },
    truth: null,
    history: [],
  });
  $("error").textContent = "";
  await refresh();
}

// Mean and variance on the grid, with joint sample paths when the model can draw them.
async function predictGrid(grid) {
  if (view.canSample) {
    try {
      return await api.predict(view.sessionId, grid, { numSamples: NUM_SAMPLES, seed: view.seed });
    } catch (error) {
      // A model without a joint head refuses sampling with a 4xx; auth and session errors are other matters.
      if (!(error instanceof ApiError) || error.status >= 500 || [401, 403, 404].includes(error.status)) throw error;
      view.canSample = false;
    }
  }
  return api.predict(view.sessionId, grid);
}

async function refresh() {
  const grid = linspace(...view.model.x_range, GRID_SIZE);
  const prediction = await predictGrid(grid);
  view.info = await api.session(view.sessionId);
  view.prediction = {
    grid,
    mean: firstColumn(prediction.mean),
    std: prediction.variance.map((row) => Math.sqrt(row[0])),
    samples: (prediction.samples || []).map(firstColumn), // [S][m][1] -> S paths
  };
  view.history.push([view.info.num_points, view.info.state_bytes]);
  render();
}

async function addPoint(sessionId, x, y) {
  if (view.sessionId !== sessionId) return; // the session was replaced while this waited
  await api.addContext(sessionId, [x], [y]);
  view.points.x.push(x);
  view.points.y.push(y);
  await refresh();
}

// A fresh session, then the points of a random GP function posted one at a time in random order.
async function streamDraw() {
  const button = $("stream");
  button.disabled = true;
  try {
    await enqueue(newSession);
    const sessionId = view.sessionId;
    if (!sessionId) return; // the new session could not be made; the error is on the page
    const [low, high] = view.model.x_range;
    const gauss = normal(Math.random);
    const unit = (high - low) / 4; // the shipped model's range [-2, 2] is 4 units wide
    const xs = linspace(low, high, 121);
    const f = rbfDraw(xs, unit * (0.2 + 0.4 * Math.random()), 0.5 + 0.5 * Math.random(), gauss);
    view.truth = { x: xs, y: f };
    for (const i of shuffled(xs.keys()).slice(0, STREAM_POINTS)) {
      if (view.sessionId !== sessionId) break; // reset or another model
      await enqueue(() => addPoint(sessionId, xs[i], f[i] + NOISE_STD * gauss()));
      await sleep(STREAM_DELAY_MS);
    }
  } finally {
    button.disabled = false;
  }
}

// ---- drawing -----------------------------------------------------------------------------------

let plot = null; // the chart last drawn, to map clicks back to data

function render() {
  if (!view.model) return;
  const chart = new Chart(plotCanvas, { xRange: view.model.x_range, yRange: Y_RANGE, xLabel: "x", yLabel: "y" });
  plot = chart;
  chart.begin();
  const p = view.prediction;
  if (p) {
    chart.band(
      p.grid,
      p.mean.map((m, i) => m - 2 * p.std[i]),
      p.mean.map((m, i) => m + 2 * p.std[i]),
      "rgba(37, 99, 235, 0.18)",
    );
    p.samples.forEach((path, i) => chart.line(p.grid, path, { color: SAMPLE_COLOURS[i % SAMPLE_COLOURS.length], width: 1.2 }));
    chart.line(p.grid, p.mean, { color: "#1d4ed8", width: 2 });
  }
  if (view.truth) chart.line(view.truth.x, view.truth.y, { color: "#444", width: 1, dash: [5, 4] });
  chart.dots(view.points.x, view.points.y, "#111");

  const info = view.info;
  Object.assign(plotCanvas.dataset, {
    sessionId: view.sessionId || "",
    numPoints: info ? info.num_points : 0,
    stateBytes: info ? info.state_bytes : 0,
    bandPoints: p ? p.grid.length : 0,
    samplePaths: p ? p.samples.length : 0,
  });
  $("num-points").textContent = info ? info.num_points.toLocaleString("en") : "–";
  $("state-bytes").textContent = info ? info.state_bytes.toLocaleString("en") : "–";
  $("samples-note").textContent = view.canSample
    ? `lines: ${p ? p.samples.length : 0} joint sample paths from the model`
    : "no sample paths: the service does not serve joint samples for this model";
  renderHistory();
}

// State size against point count: a flat line is the point of the demo.
function renderHistory() {
  const history = view.history;
  if (!history.length) return;
  const points = history.map(([n]) => n);
  const kib = history.map(([, bytes]) => bytes / 1024);
  const chart = new Chart($("history"), {
    xRange: [0, Math.max(10, ...points)],
    yRange: [0, Math.max(...kib) * 1.3],
    xLabel: "context points",
    yLabel: "KiB",
  });
  chart.begin();
  chart.line(points, kib, { color: "#1d4ed8", width: 2 });
  chart.dots(points, kib, "#1d4ed8", 2.5);
  const [first, last] = [history[0], history[history.length - 1]];
  $("state-note").textContent =
    first[1] === last[1]
      ? `the same ${last[1].toLocaleString("en")} bytes at ${first[0]} and at ${last[0]} points`
      : `changed from ${first[1]} bytes at ${first[0]} points to ${last[1]} at ${last[0]}`;
}

// ---- wiring ------------------------------------------------------------------------------------

async function start() {
  await loadModels();
  await newSession();
}

plotCanvas.addEventListener("click", (event) => {
  const point = view.sessionId && plot?.toData(event);
  if (point) {
    const sessionId = view.sessionId;
    enqueue(() => addPoint(sessionId, point.x, point.y));
  }
});
$("reset").addEventListener("click", () => enqueue(newSession));
$("stream").addEventListener("click", streamDraw);
$("model").addEventListener("change", () => enqueue(newSession));
$("api-key").addEventListener("change", () => enqueue(start));
window.addEventListener("resize", render);
enqueue(start);
