// The /demo page: one session on the service; clicks and streamed GP draws are posted as context
// points, and each update redraws the predictive mean ± 2σ, the model's joint sample paths (when it
// has a joint head, as GET /v1/models says) and the session's state size.
//
// The plot is drawn at once (axes and what it waits for), and the band as soon as the session
// exists: with no points yet, the model's prior.
//
// With an event model the page shows an event session instead (events.js): clicks post events, and
// each update redraws the forecast of the next event. Models with two inputs are left to the image
// view (image.js), which the buttons at the top switch to.
//
// For tests and the curious, the plot canvas carries what it shows as data attributes:
// data-session-id, data-session-kind, data-num-points (points or events; empty until there is a
// session), data-state-bytes, data-band-points (grid points of the ±2σ band drawn),
// data-sample-paths (joint sample paths drawn), data-forecast (event sessions: the next event's
// 5%, 50% and 95% times, comma-separated) and data-busy ("true" while requests run).

import { Api, ApiError } from "./api.js";
import { Chart } from "./chart.js";
import { drawEvents, hawkes, isEvents, markAt, markNote, markRange, QUANTILES, TIME_RANGE } from "./events.js";
import { normal, rbfDraw } from "./gp.js";
import { drawHistory } from "./history.js";
import { showImageView } from "./image.js";
import { plural, serialQueue, shuffled, sleep } from "./util.js";

const GRID_SIZE = 151; // prediction grid over the model's input range
const NUM_SAMPLES = 3; // joint sample paths to draw
const Y_RANGE = [-3, 3];
const DEFAULT_X_RANGE = [-2, 2]; // the shipped models' input range, until GET /v1/models says
const STREAM_POINTS = 25;
const STREAM_DELAY_MS = 60;
const MIN_STREAM_EVENTS = 5; // the fewest events a simulated Hawkes stream shows
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
  waiting: "starting a session…", // what the plot says while it has no prediction to draw
  points: { x: [], y: [] },
  truth: null, // {x, y}: the streamed GP draw
  prediction: null, // {grid, mean, std, samples, warnings}
  events: { times: [], marks: [] }, // event sessions: the events posted
  forecast: null, // event sessions: POST /v1/sessions/{id}/forecast
  info: null, // GET /v1/sessions/{id}
  history: [], // [num_points, state_bytes] after every update
};

// Requests run one at a time, in order: a click during a stream lands between two streamed points.
const enqueue = serialQueue(plotCanvas, showError);

function showError(error) {
  const unauthorised = error instanceof ApiError && error.status === 401;
  $("error").textContent = `${error.message}${unauthorised ? " (enter the service's API key above)" : ""}`;
  if (!view.sessionId) {
    view.waiting = unauthorised ? "enter the service's API key above to start" : "no session: see the error below";
    render();
  }
}

// Whether the model can draw joint sample paths: models with a joint head list their block size.
const canSample = (model) => model != null && model.joint_block_size != null;

const linspace = (low, high, n) => Array.from({ length: n }, (_, i) => low + ((high - low) * i) / (n - 1));
const firstColumn = (rows) => rows.map((row) => row[0]);

// ---- talking to the service --------------------------------------------------------------------

// The models this view can plot: one input (or events).
const onCurves = (model) => isEvents(model) || model.dim_x === 1;

async function loadModels() {
  view.models = (await api.models()).models.filter(onCurves);
  $("model").replaceChildren(
    ...view.models.map((m) => new Option(`${m.name}${m.default ? " (default)" : ""}`, m.name, m.default, m.default)),
  );
}

async function newSession() {
  const previous = view.sessionId;
  view.sessionId = null; // stops a running stream
  if (previous) await api.deleteSession(previous).catch(() => {}); // it would expire anyway
  view.model = view.models.find((m) => m.name === $("model").value);
  if (!view.model) throw new Error("no model with one input or events is served: see the image view");
  const info = await api.createSession(view.model.name);
  Object.assign(view, {
    sessionId: info.session_id,
    seed: Math.floor(Math.random() * 2 ** 31),
    points: { x: [], y: [] },
    truth: null,
    prediction: null,
    events: { times: [], marks: [] },
    forecast: null,
    info: null,
    history: [],
  });
  $("error").textContent = "";
  view.waiting = isEvents(view.model) ? "forecasting from the model's prior…" : "drawing the model's prior…";
  render();
  await refresh(info); // the new session's own answer: no need to ask for it again
}

// Mean and variance on the grid, with joint sample paths when the model has a joint head.
function predictGrid(grid) {
  const options = canSample(view.model) ? { numSamples: NUM_SAMPLES, seed: view.seed } : {};
  return api.predict(view.sessionId, grid.map((x) => [x]), options);
}

// Redraw from a prediction on the grid (event sessions: a forecast) and the session's info (asked for unless given).
async function refresh(info = null) {
  if (isEvents(view.model)) {
    view.forecast = await api.forecast(view.sessionId, QUANTILES);
    view.info = info || (await api.session(view.sessionId));
    view.history.push([view.info.num_points, view.info.state_bytes]);
    render();
    return;
  }
  const grid = linspace(...view.model.x_range, GRID_SIZE);
  const prediction = await predictGrid(grid);
  view.info = info || (await api.session(view.sessionId));
  view.prediction = {
    grid,
    mean: firstColumn(prediction.mean),
    std: prediction.variance.map((row) => Math.sqrt(row[0])),
    samples: (prediction.samples || []).map(firstColumn), // [S][m][1] -> S paths
    warnings: prediction.warnings,
  };
  view.history.push([view.info.num_points, view.info.state_bytes]);
  render();
}

async function addPoint(sessionId, x, y) {
  if (view.sessionId !== sessionId) return; // the session was replaced while this waited
  await api.addContext(sessionId, [[x]], [[y]]);
  view.points.x.push(x);
  view.points.y.push(y);
  await refresh();
}

async function addEvent(sessionId, time, mark) {
  if (view.sessionId !== sessionId) return; // the session was replaced while this waited
  await api.addEvents(sessionId, [time], [mark]);
  view.events.times.push(time);
  view.events.marks.push(mark);
  await refresh();
}

// A fresh session, then the points of a random GP function posted one at a time in random order
// (event sessions: the events of a simulated Hawkes process, in time order).
async function streamDraw() {
  const button = $("stream");
  button.disabled = true;
  try {
    await enqueue(newSession);
    const sessionId = view.sessionId;
    if (!sessionId) return; // the new session could not be made; the error is on the page
    if (isEvents(view.model)) {
      // Hawkes streams are bursty: some draws hold only two or three events, too few to show the
      // forecast learning, so redraw until there are enough.
      let draw;
      do draw = hawkes(Math.random, view.model.num_marks, TIME_RANGE[1]);
      while (draw.times.length < MIN_STREAM_EVENTS);
      const { times, marks } = draw;
      for (const [i, time] of times.entries()) {
        if (view.sessionId !== sessionId) break; // reset or another model
        await enqueue(() => addEvent(sessionId, time, marks[i]));
        await sleep(STREAM_DELAY_MS);
      }
      return;
    }
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
  const model = view.model;
  const events = isEvents(model);
  const xRange = events ? TIME_RANGE : model ? model.x_range : DEFAULT_X_RANGE;
  const axes = events ? { yRange: markRange(model), xLabel: "time", yLabel: "mark" } : { yRange: Y_RANGE, xLabel: "x", yLabel: "y" };
  const chart = new Chart(plotCanvas, { xRange, ...axes });
  plot = chart;
  chart.begin();
  const p = view.prediction;
  const f = view.forecast;
  if (!(events ? f : p)) chart.message(view.waiting);
  if (events) drawEvents(chart, model, view.events, f);
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

  const info = view.info && view.sessionId ? view.info : null;
  Object.assign(plotCanvas.dataset, {
    sessionId: view.sessionId || "",
    sessionKind: model ? model.session_kind : "",
    forecast: f ? f.wait_quantiles.map((w) => f.now + w).join(",") : "",
    numPoints: info ? info.num_points : "",
    stateBytes: info ? info.state_bytes : "",
    bandPoints: p ? p.grid.length : 0,
    samplePaths: p ? p.samples.length : 0,
  });
  $("state-waiting").hidden = info !== null;
  $("state-summary").hidden = info === null;
  if (info) {
    $("num-points").textContent = info.num_points.toLocaleString("en");
    const noun = events ? "event" : "context point";
    $("points-noun").textContent = info.num_points === 1 ? noun : `${noun}s`;
    $("state-bytes").textContent = info.state_bytes.toLocaleString("en");
  }
  $("warnings").textContent = (events ? f?.warnings : p?.warnings)?.join("; ") || "";
  $("stream").textContent = events
    ? "Simulate a Hawkes process and stream its events"
    : "Draw a random GP function and stream its points";
  const sampling = canSample(model);
  $("lead-shows").textContent = events
    ? "the forecast of the next event: the 5%-95% interval of its time (blue band) and its median (dashed)"
    : sampling
    ? `the predictive mean ± 2σ (blue band) and ${NUM_SAMPLES} of the model's joint sample paths`
    : "the predictive mean ± 2σ (blue band)";
  $("samples-note").textContent = !model
    ? ""
    : events
      ? markNote(f)
      : sampling
      ? `lines: ${plural(p ? p.samples.length : 0, "joint sample path")} from the model`
      : "no sample paths: this model has no joint head (GET /v1/models)";
  renderHistory();
}

function renderHistory() {
  if (!view.history.length) return;
  const events = isEvents(view.model);
  const [noun, axisLabel] = events ? ["event", "events"] : ["point", "context points"];
  $("state-note").textContent = drawHistory($("history"), view.history, noun, axisLabel);
}

// ---- wiring ------------------------------------------------------------------------------------

// Show the curves (this module) or the image view; a hidden canvas has no size, so the view shown is redrawn.
function showView(name) {
  $("curve-view").hidden = name !== "curves";
  $("image-view").hidden = name !== "image";
  $("view-curves").setAttribute("aria-pressed", String(name === "curves"));
  $("view-image").setAttribute("aria-pressed", String(name === "image"));
  if (name === "image") showImageView(api);
  else render();
}

async function start() {
  await loadModels();
  await newSession();
}

plotCanvas.addEventListener("click", (event) => {
  const point = view.sessionId && plot?.toData(event);
  if (point) {
    const sessionId = view.sessionId;
    if (isEvents(view.model)) enqueue(() => addEvent(sessionId, point.x, markAt(view.model, point.y)));
    else enqueue(() => addPoint(sessionId, point.x, point.y));
  }
});
$("reset").addEventListener("click", () => enqueue(newSession));
$("stream").addEventListener("click", streamDraw);
$("model").addEventListener("change", () => enqueue(newSession));
$("api-key").addEventListener("change", () => enqueue(start));
$("view-curves").addEventListener("click", () => showView("curves"));
$("view-image").addEventListener("click", () => showView("image"));
window.addEventListener("resize", render);
render(); // the axes and what the plot waits for, before any answer
enqueue(start);
