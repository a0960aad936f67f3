"""Our model against its peers, in one process on the same CPU: the cost of adding one point to a
context of N points and then predicting 100 targets, memory, and log-likelihood.

    python -m bench.peers --checkpoint checkpoints/cmanp-gp-rbf.safetensors [--quick]

Peers (``bench/baselines``): a re-encoding Transformer NP (TNP-D style, the same width and depth
as our model, random weights: it is timed, not scored) and an exact GP with an incremental
Cholesky factor (float64, the task's true hyperparameters, so its log-likelihood is the oracle's).
For each N, one RBF GP task with N + 1 context points and 100 targets is drawn exactly; the first
N points are the existing context, the last one is the point being added. Each repeat times the
three models back to back, so load on a shared machine hits them alike; medians are reported.

* ours: ``net.update`` with the one point (O(1)), then ``net.predict`` of 100 targets (derives the
  latents once for the new state, then decodes).
* TNP: it cannot update, so adding a point means encoding all N + 1 points again; "add" is that
  forward pass with a single target (its cheapest form), "add + predict" the pass with 100 targets.
* GP: a rank-1 extension of the factor (O(N^2)), then the predictive mean and variance (O(N^2 M)).

Where a peer does not fit in memory or time, the row says so instead of a number.
Writes JSON (default bench/out/peers.json).
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from collections.abc import Callable

import torch

from bench.baselines.incremental_gp import IncrementalGP
from bench.baselines.transformer_np import TNPConfig, TransformerNP
from bench.common import checkpoint_cli
from model import CMANP, load_checkpoint
from model.data.gp import GPBatch, GPSampler

TARGETS = 100
GP_EXTRA_CAPACITY = 64
GP_MAX_BYTES = 0.5 * 2**30 * 24  # leave room for the rest: don't allocate past ~half of a 24 GiB box
TNP_MAX_N = 20_000  # a TNP pass over 10^5 points takes ~10 minutes on one core: not run in make bench


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _gaussian_ll(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> float:
    mean, var, y = (t.double().flatten() for t in (mean, var, y))
    return float((-0.5 * (math.log(2 * math.pi) + var.log() + (y - mean).square() / var)).mean())


def sample_task(n: int, g: torch.Generator, exact: bool) -> GPBatch:
    """N + 1 context points and 100 targets of one RBF task; exact sampling needs an O(n^3) Cholesky,
    so for sizes where that does not fit, x is uniform and y a smooth function (timing only)."""
    if exact:
        return GPSampler("rbf").sample(1, n + 1, TARGETS, g)
    x = torch.rand(1, n + 1 + TARGETS, 1, generator=g) * 4 - 2
    y = torch.sin(3 * x)
    one = torch.ones(1)
    return GPBatch(x[:, : n + 1], y[:, : n + 1], x[:, n + 1 :], y[:, n + 1 :], one, one, one, "rbf", 0.02)


def compare(net: CMANP, tnp: TransformerNP, n: int, repeats: int, g: torch.Generator) -> dict:
    gp_bytes = 8 * (n + GP_EXTRA_CAPACITY) ** 2
    gp_fits = gp_bytes <= GP_MAX_BYTES
    task = sample_task(n, g, exact=gp_fits)
    xc, yc, xt, yt = task.xc[:, :n], task.yc[:, :n], task.xt, task.yt
    x_new, y_new = task.xc[:, n:], task.yc[:, n:]
    row: dict = {"n": n, "targets": TARGETS, "repeats": repeats, "exact_task": gp_fits}

    # ours
    state = net.condition(xc, yc, chunk_size=1024)
    # Our add is cheap and noisy on a shared machine: many more repeats for a steady median.
    row["ours_add_s"] = _median_seconds(lambda: net.update(state, x_new, y_new), 40 * repeats)
    row["ours_add_predict_s"] = _median_seconds(lambda: net.predict(net.update(state, x_new, y_new), xt), repeats)
    row["ours_memory_bytes"] = len(state.to_bytes())
    if gp_fits:
        mean, var = net.predict(net.update(state, x_new, y_new), xt)
        row["ours_ll"] = _gaussian_ll(mean, var, yt)

    # re-encoding TNP
    if n <= TNP_MAX_N:
        xc1, yc1 = task.xc, task.yc
        tnp_repeats = min(repeats, 3) if n >= 10_000 else repeats  # seconds per pass there
        row["tnp_add_s"] = _median_seconds(lambda: tnp(xc1, yc1, xt[:, :1]), tnp_repeats)
        row["tnp_add_predict_s"] = _median_seconds(lambda: tnp(xc1, yc1, xt), tnp_repeats)
        row["tnp_memory_bytes"] = (n + 1) * (net.cfg.dim_x + net.cfg.dim_y) * 4  # it must keep every point
    else:
        row["tnp_skipped"] = f"TNP not run: one O(N^2) pass over {n:,} points takes minutes on one core"

    # incremental exact GP
    row["gp_memory_bytes"] = gp_bytes
    if gp_fits:
        hyp = (task.kernel, float(task.length[0]), float(task.scale[0]), float(task.period[0]), task.noise_std)
        gp = IncrementalGP(n + GP_EXTRA_CAPACITY, 1, *hyp)
        gp.fit(xc[0], yc[0, :, 0])
        adds, add_predicts = [], []
        for _ in range(repeats):  # each repeat adds the point to the same n-point factor
            gp.truncate(n)
            t0 = time.perf_counter()
            gp.add(x_new[0, 0], float(y_new[0, 0, 0]))
            t1 = time.perf_counter()
            mean, var = gp.predict(xt[0])
            adds.append(t1 - t0)
            add_predicts.append(time.perf_counter() - t0)
        row["gp_add_s"] = statistics.median(adds)
        row["gp_add_predict_s"] = statistics.median(add_predicts)
        row["gp_memory_bytes"] = gp.memory_bytes
        row["gp_ll"] = _gaussian_ll(mean, var, yt)
    else:
        row["gp_skipped"] = f"does not fit: the factor alone needs {gp_bytes / 2**30:.0f} GiB"

    for peer in ("tnp", "gp"):
        if f"{peer}_add_s" in row:
            row[f"{peer}_add_over_ours"] = row[f"{peer}_add_s"] / row["ours_add_s"]
            row[f"{peer}_add_predict_over_ours"] = row[f"{peer}_add_predict_s"] / row["ours_add_predict_s"]
    return row


def run(checkpoint: str, quick: bool) -> dict:
    torch.set_num_threads(1)
    net = load_checkpoint(checkpoint)
    torch.manual_seed(0)
    c = net.cfg
    tnp_cfg = TNPConfig(c.dim_x, c.dim_y, c.d_model, c.n_heads, c.n_blocks, c.ff_width, c.embed_depth)
    tnp = TransformerNP(tnp_cfg).eval()
    g = torch.Generator().manual_seed(0)
    sizes = [100, 1000] if quick else [1000, 10_000, 100_000]
    with torch.inference_mode():
        rows = [compare(net, tnp, n, repeats=3 if quick else (20 if n < 10_000 else 5), g=g) for n in sizes]
    measured = [r for r in rows if "tnp_add_s" in r]
    for r in rows:
        if "tnp_skipped" in r and measured:  # O(N^2) attention dominates at these sizes
            ref = measured[-1]
            r["tnp_add_projected_s"] = ref["tnp_add_s"] * (r["n"] / ref["n"]) ** 2
            r["tnp_skipped"] += f" (projected from N = {ref['n']:,} as N^2: {r['tnp_add_projected_s']:.0f} s)"
    return {
        "checkpoint": checkpoint,
        "tnp_config": tnp_cfg.__dict__,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows,
    }


def _fmt(row: dict, key: str, scale: float = 1e3) -> str:
    return f"{row[key] * scale:.3g}" if key in row else "n/a"


def report(result: dict) -> None:
    print(f"{'N':>7} | {'add ms: ours':>12} {'TNP':>9} {'GP':>9} | {'add+predict ms: ours':>20} {'TNP':>9} {'GP':>9}")
    for r in result["rows"]:
        print(
            f"{r['n']:>7} | {_fmt(r, 'ours_add_s'):>12} {_fmt(r, 'tnp_add_s'):>9} {_fmt(r, 'gp_add_s'):>9} | "
            f"{_fmt(r, 'ours_add_predict_s'):>20} {_fmt(r, 'tnp_add_predict_s'):>9} {_fmt(r, 'gp_add_predict_s'):>9}"
        )
    for r in result["rows"]:
        print(
            f"N={r['n']}: memory ours {r['ours_memory_bytes']} B, GP {r['gp_memory_bytes']} B; "
            f"LL ours {r.get('ours_ll', 'n/a')}, GP {r.get('gp_ll', 'n/a')}"
        )


def main(argv: list[str] | None = None) -> dict:
    return checkpoint_cli("peers", __doc__, run, report, argv)


if __name__ == "__main__":
    main()
