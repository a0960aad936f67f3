// The session's state size against its count of points (events, pixels) after every update: a
// flat line is the point of the demo.

import { Chart } from "./chart.js";
import { plural } from "./util.js";

// Draw history ([count, state_bytes] pairs, at least one) on the canvas; returns the note that
// says what it shows. noun: what is counted ("point"); axisLabel: the x axis's label.
export function drawHistory(canvas, history, noun, axisLabel) {
  const counts = history.map(([n]) => n);
  const kib = history.map(([, bytes]) => bytes / 1024);
  const chart = new Chart(canvas, {
    xRange: [0, Math.max(10, ...counts)],
    yRange: [0, Math.max(...kib) * 1.3],
    xLabel: axisLabel,
    yLabel: "KiB",
  });
  chart.begin();
  chart.line(counts, kib, { color: "#1d4ed8", width: 2 });
  chart.dots(counts, kib, "#1d4ed8", 2.5);
  const [first, last] = [history[0], history[history.length - 1]];
  const bytes = (n) => n.toLocaleString("en");
  if (first[0] === last[0]) return `add ${noun}s and watch it stay ${bytes(last[1])} bytes`;
  if (first[1] === last[1]) return `the same ${bytes(last[1])} bytes at ${first[0]} and at ${plural(last[0], noun)}`;
  return `changed from ${bytes(first[1])} bytes at ${plural(first[0], noun)} to ${bytes(last[1])} at ${plural(last[0], noun)}`;
}
