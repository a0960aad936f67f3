// Random functions for the "stream a GP draw" button: an exact draw from a GP with an RBF kernel,
// with hyperparameters in the range the shipped model was trained on (model/data/gp.py).

// Standard normal draws from a uniform generator on [0, 1) such as Math.random (Box-Muller).
export function normal(rand) {
  return () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}

// Lower Cholesky factor of a symmetric positive-definite matrix (array of rows).
function cholesky(a) {
  const n = a.length;
  const l = Array.from({ length: n }, () => new Float64Array(n));
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let sum = a[i][j];
      for (let k = 0; k < j; k++) sum -= l[i][k] * l[j][k];
      l[i][j] = i === j ? Math.sqrt(sum) : sum / l[j][j];
    }
  }
  return l;
}

// f(xs) for one f ~ GP(0, scale^2 exp(-(x - x')^2 / (2 length^2))): f = L z with L L^T = K + jitter I.
export function rbfDraw(xs, length, scale, gauss) {
  // The jitter keeps the factorisation stable on a dense grid; it adds ~1e-3 scale of roughness.
  const jitter = 1e-6 * scale * scale;
  const k = xs.map((a, i) => xs.map((b, j) => scale * scale * Math.exp(-0.5 * ((a - b) / length) ** 2) + (i === j ? jitter : 0)));
  const l = cholesky(k);
  const z = xs.map(() => gauss());
  return l.map((row, i) => row.reduce((sum, v, j) => (j <= i ? sum + v * z[j] : sum), 0));
}
