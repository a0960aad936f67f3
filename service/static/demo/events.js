// The demo's view of an event session (a model whose GET /v1/models entry says session_kind
// "events"): the plot's x axis is time (the session's default clock: model time units), its rows
// are the marks; a click posts an event at that time with that row's mark, and the page draws the
// forecast of the next event: the 5%-95% waiting-time interval after the last event (band) and its
// median (dashed line), with the mark probabilities in the legend.

export const TIME_RANGE = [0, 20];
export const QUANTILES = [0.05, 0.5, 0.95];
export const MARK_COLOURS = ["#e4572e", "#17a398", "#9b5de5", "#f4a259", "#5b8e7d"];

export const isEvents = (model) => model != null && model.session_kind === "events";

// The y range of the marks' rows, 0..num_marks-1.
export const markRange = (model) => [-0.5, model.num_marks - 0.5];

// The mark of a click's row.
export const markAt = (model, y) => Math.min(model.num_marks - 1, Math.max(0, Math.round(y)));

// A univariate exponential Hawkes process with uniform marks on [0, end], by Ogata's thinning:
// between events the intensity mu + sum alpha beta e^{-beta (t - t_j)} only decays.
export function hawkes(random, numMarks, end, { mu = 0.4, alpha = 0.6, beta = 1.5 } = {}) {
  const times = [];
  const marks = [];
  let t = 0;
  let excitation = 0; // at time t
  for (;;) {
    const bound = mu + excitation;
    const wait = -Math.log(1 - random()) / bound;
    excitation *= Math.exp(-beta * wait);
    t += wait;
    if (t > end) return { times, marks };
    if (random() * bound <= mu + excitation) {
      times.push(t);
      marks.push(Math.floor(random() * numMarks));
      excitation += alpha * beta;
    }
  }
}

// Events as dots on their marks' rows, and the forecast after the last one (or the prior from 0).
export function drawEvents(chart, model, events, forecast) {
  const [low, high] = markRange(model);
  if (forecast) {
    const [q05, median, q95] = forecast.wait_quantiles.map((w) => forecast.now + w);
    chart.band([q05, q95], [low, low], [high, high], "rgba(37, 99, 235, 0.18)");
    chart.line([median, median], [low, high], { color: "#1d4ed8", width: 2, dash: [6, 4] });
  }
  for (let k = 0; k < model.num_marks; k++) {
    const at = events.times.filter((_, i) => events.marks[i] === k);
    chart.dots(at, at.map(() => k), MARK_COLOURS[k % MARK_COLOURS.length]);
  }
}

// The legend's text: the next mark's probabilities.
export function markNote(forecast) {
  if (!forecast) return "";
  const probabilities = forecast.mark_probabilities.map((p, k) => `mark ${k}: ${(100 * p).toFixed(0)}%`);
  return `next event's mark: ${probabilities.join(", ")}`;
}
