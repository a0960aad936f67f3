// A minimal 2-D chart on a plain canvas: linear axes with ticks, lines, a filled band and dots.
// Coordinates are data units; the chart maps them to pixels and back (for clicks).

const MARGIN = { left: 56, right: 16, top: 12, bottom: 34 };

// About `count` round tick values covering [low, high].
function ticks(low, high, count) {
  const raw = (high - low) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const values = [];
  for (let v = Math.ceil(low / step) * step; v <= high + step * 1e-9; v += step) values.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return values;
}

// A tick value without floating-point noise (0.30000000000000004 -> "0.3").
const label = (v) => String(+v.toFixed(6));

export class Chart {
  constructor(canvas, { xRange, yRange, xLabel = "", yLabel = "" }) {
    this.canvas = canvas;
    Object.assign(this, { xRange, yRange, xLabel, yLabel });
  }

  // Match the backing store to the displayed size and the screen's pixel ratio, then clear.
  begin() {
    const { canvas } = this;
    const ratio = window.devicePixelRatio || 1;
    this.width = canvas.clientWidth;
    this.height = canvas.clientHeight;
    canvas.width = Math.round(this.width * ratio);
    canvas.height = Math.round(this.height * ratio);
    this.ctx = canvas.getContext("2d");
    this.ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    this.ctx.clearRect(0, 0, this.width, this.height);
    this.axes();
    // Everything drawn after the axes stays inside the plotting area (a wide band would spill over).
    this.ctx.beginPath();
    this.ctx.rect(MARGIN.left, MARGIN.top, this.width - MARGIN.left - MARGIN.right, this.height - MARGIN.top - MARGIN.bottom);
    this.ctx.clip();
  }

  px(x) {
    const [low, high] = this.xRange;
    return MARGIN.left + ((x - low) / (high - low)) * (this.width - MARGIN.left - MARGIN.right);
  }

  py(y) {
    const [low, high] = this.yRange;
    return this.height - MARGIN.bottom - ((y - low) / (high - low)) * (this.height - MARGIN.top - MARGIN.bottom);
  }

  // Data coordinates of a mouse event on the canvas (offsetX/Y: from its padding edge, as drawn),
  // or null outside the plotting area.
  toData(event) {
    const [x0, x1] = this.xRange;
    const [y0, y1] = this.yRange;
    const x = x0 + ((event.offsetX - MARGIN.left) / (this.width - MARGIN.left - MARGIN.right)) * (x1 - x0);
    const y = y0 + ((this.height - MARGIN.bottom - event.offsetY) / (this.height - MARGIN.top - MARGIN.bottom)) * (y1 - y0);
    return x >= x0 && x <= x1 && y >= y0 && y <= y1 ? { x, y } : null;
  }

  axes() {
    const { ctx, width, height } = this;
    ctx.save();
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = "#555";
    ctx.strokeStyle = "#e4e4e4";
    ctx.lineWidth = 1;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const x of ticks(...this.xRange, 8)) {
      ctx.beginPath();
      ctx.moveTo(this.px(x), MARGIN.top);
      ctx.lineTo(this.px(x), height - MARGIN.bottom);
      ctx.stroke();
      ctx.fillText(label(x), this.px(x), height - MARGIN.bottom + 4);
    }
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const y of ticks(...this.yRange, 5)) {
      ctx.beginPath();
      ctx.moveTo(MARGIN.left, this.py(y));
      ctx.lineTo(width - MARGIN.right, this.py(y));
      ctx.stroke();
      ctx.fillText(label(y), MARGIN.left - 6, this.py(y));
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    ctx.fillText(this.xLabel, (MARGIN.left + width - MARGIN.right) / 2, height);
    ctx.translate(12, (MARGIN.top + height - MARGIN.bottom) / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textBaseline = "middle";
    ctx.fillText(this.yLabel, 0, 0);
    ctx.restore();
  }

  line(xs, ys, { color, width = 1.5, dash = [] }) {
    const { ctx } = this;
    ctx.save();
    ctx.beginPath();
    xs.forEach((x, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, this.px(x), this.py(ys[i])));
    Object.assign(ctx, { strokeStyle: color, lineWidth: width, lineJoin: "round" });
    ctx.setLineDash(dash);
    ctx.stroke();
    ctx.restore();
  }

  // The region between lower and upper, filled.
  band(xs, lower, upper, color) {
    const { ctx } = this;
    ctx.beginPath();
    xs.forEach((x, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, this.px(x), this.py(upper[i])));
    for (let i = xs.length - 1; i >= 0; i--) ctx.lineTo(this.px(xs[i]), this.py(lower[i]));
    ctx.closePath();
    ctx.fillStyle = color;
    ctx.fill();
  }

  // A line of text in the middle of the plotting area (what the plot is waiting for).
  message(text) {
    const { ctx } = this;
    ctx.save();
    Object.assign(ctx, { font: "15px system-ui, sans-serif", fillStyle: "#555", textAlign: "center", textBaseline: "middle" });
    ctx.fillText(text, (MARGIN.left + this.width - MARGIN.right) / 2, (MARGIN.top + this.height - MARGIN.bottom) / 2);
    ctx.restore();
  }

  dots(xs, ys, color, radius = 4) {
    const { ctx } = this;
    ctx.fillStyle = color;
    xs.forEach((x, i) => {
      ctx.beginPath();
      ctx.arc(this.px(x), this.py(ys[i]), radius, 0, 2 * Math.PI);
      ctx.fill();
    });
  }
}
