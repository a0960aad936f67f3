"""How calibrated a served model is on real series, beside a GP fitted to the same context (issue 17).

    python -m bench.real_data [--model NAME] [--checkpoint PATH] [--y-transform context|auto]
                              [--set development|held-out] [--quick] [--out DIR]

The data: the fixed windows of ``model.data.real_series`` (each window split into a random half
of context, streamed in time order, and the other half as targets): the development set (13 R
series, 19 windows), on which serving choices are made, or the held-out set (10 other series, 13
windows), which only reports them.

The model, through the real service: ``python -m service`` started as ``bench.service_load``
starts it (bundled redis-server, append-only file on), serving only the checkpoint under test
(a temporary checkpoint directory links it and its model card, named ``--model``). Per window,
one session with ``x_transform`` ``{"low", "high"}`` = the window's x span (onto the model's
[-2, 2]) and a ``y_transform`` of

* ``context``: ``{"shift": mean, "scale": std}`` of the context's y, the README's recipe;
* ``auto``: the string ``"auto"``: the session scales y from its own points (``service.transforms``).

The context is posted one point per request, in time order, as a user streaming readings would;
then one predict at the targets, then ``GET /v1/sessions/{id}`` for the prequential calibration
report and its ``status``.

The baseline: ``bench.baselines.fitted_gp``, ML-II on the context, the kernel chosen by the log
marginal likelihood; also the kernel that did better on the targets (a reference that peeks).

Scores on the targets, in user units, from the Gaussian predictive of each target: log
likelihood per point, RMSE, and the share inside the central 95% interval. Per series the points
of its windows are pooled; the average weighs every series alike. The model-minus-GP gap in log
likelihood does not depend on the series' units (both densities are in the same units), unlike
the log likelihoods themselves. Writes JSON (default bench/out/real_data.json) and prints the
markdown section of bench/RESULTS.md. ``--quick``: the first window of three series, for CI.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from bench.baselines.fitted_gp import by_evidence, fit_both
from bench.common import CHECKPOINT, OUT_DIR, write_json
from bench.report import real_data_section
from bench.service_load import start_server, stop_server
from model.data.real_series import SETS, Window, real_windows
from service.client import CMANPClient, CMANPError

REPO = Path(__file__).resolve().parents[1]
Y_TRANSFORMS = ("context", "auto")
QUICK_SERIES = 3
Z_95 = NormalDist().inv_cdf(0.975)


def y_transform_for(window: Window, mode: str) -> dict[str, float] | str:
    """The session's ``y_transform`` for a window: the context's mean and std, or ``"auto"``."""
    if mode == "context":
        return {"shift": float(np.mean(window.y_context)), "scale": float(np.std(window.y_context))}
    if mode == "auto":
        return "auto"
    raise ValueError(f"unknown y_transform mode {mode!r}; choose from {Y_TRANSFORMS}")


def gaussian_scores(y: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> dict[str, float]:
    """Sums over the targets of the log density, squared error and 95%-interval hits, and the per-point scores."""
    y, mean, variance = (np.asarray(a, np.float64).reshape(-1) for a in (y, mean, variance))
    error = y - mean
    log_density = -0.5 * (np.log(2 * math.pi * variance) + error**2 / variance)
    sums = {
        "n": len(y),
        "ll_sum": float(log_density.sum()),
        "sq_err_sum": float((error**2).sum()),
        "covered_95": int((np.abs(error) <= Z_95 * np.sqrt(variance)).sum()),
    }
    return sums | per_point(sums)


def per_point(sums: dict[str, float]) -> dict[str, float]:
    """Log likelihood per point, RMSE and 95% coverage from the sums of ``gaussian_scores`` (or pooled sums)."""
    n = sums["n"]
    return {"ll": sums["ll_sum"] / n, "rmse": math.sqrt(sums["sq_err_sum"] / n), "coverage_95": sums["covered_95"] / n}


def pooled(scores: list[dict[str, float]]) -> dict[str, float]:
    """The scores of several windows' targets taken together."""
    sums = {k: sum(s[k] for s in scores) for k in ("n", "ll_sum", "sq_err_sum", "covered_95")}
    return sums | per_point(sums)


@contextmanager
def served(checkpoint: Path, model: str) -> Iterator[str]:
    """The service, serving only ``checkpoint`` (and its model card) under the name ``model``; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="real-data-") as tmp:
        work = Path(tmp)
        (work / "checkpoints").mkdir()
        for source in (checkpoint, checkpoint.with_suffix(".json")):
            if source.is_file():
                (work / "checkpoints" / f"{model}{source.suffix}").symlink_to(source.resolve())
        env = {
            "CMANP_CHECKPOINT_DIR": str(work / "checkpoints"),
            "CMANP_DEFAULT_MODEL": model,
            "CMANP_WORKERS": "1",  # one client posting in sequence: one worker is all it can use
            "CMANP_LOG_LEVEL": "warning",
        }
        server = start_server(REPO, work, work / "server.log", env)
        try:
            yield server.url
        except BaseException:
            OUT_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copy(work / "server.log", OUT_DIR / "real_data_server.log")  # for the post-mortem
            raise
        finally:
            stop_server(server)


def model_window(client: CMANPClient, window: Window, model: str, y_mode: str) -> dict[str, Any]:
    """Stream one window's context into a new session point by point, predict the targets, read the report."""
    try:
        session = client.create_session(
            model=model,
            x_transform={"low": window.x_low, "high": window.x_high},
            y_transform=y_transform_for(window, y_mode),  # type: ignore[arg-type]  # "auto" is a string
        )
    except CMANPError as e:
        raise SystemExit(f"the service refused a session with y_transform {y_mode!r}: {e}") from e
    sid = session.session_id
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(zip(window.x_context, window.y_context, strict=True)):
        client.add_context(sid, x=[x], y=[y], idempotency_key=f"{window.key}/{i}")
    post_seconds = time.perf_counter() - t0
    prediction = client.predict(sid, window.x_target)
    info = client.get_session(sid)
    client.delete_session(sid)
    return gaussian_scores(window.y_target, prediction.mean, prediction.variance) | {
        "calibration": info.calibration,
        "y_transform": info.y_transform,
        "out_of_range_fraction": info.out_of_range_fraction,
        "warnings": prediction.warnings,
        "post_seconds": post_seconds,
    }


def gp_window(window: Window) -> dict[str, Any]:
    """The fitted GPs of one window: each kernel's fit and scores, the evidence's choice and the targets' choice."""
    fits = fit_both(window.x_context, window.y_context, window.x_low, window.x_high)
    kernels = {}
    for name, f in fits.items():
        mean, variance = f.predict(window.x_target)
        kernels[name] = gaussian_scores(window.y_target, mean, variance) | {
            "log_marginal_likelihood": f.log_marginal_likelihood,
            "hyperparameters": f.hyperparameters(),
            "at_bounds": f.at_bounds(),
        }
    best = max(kernels, key=lambda k: kernels[k]["ll"])
    return {"chosen": by_evidence(fits).kernel, "best_on_targets": best, "kernels": kernels}


def series_rows(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per series, its windows' targets pooled, in the development set's order."""
    names = list(dict.fromkeys(w["series"] for w in windows))
    rows = []
    for name in names:
        ws = [w for w in windows if w["series"] == name]
        model = pooled([w["model"] for w in ws])
        gp = pooled([w["gp"]["kernels"][w["gp"]["chosen"]] for w in ws])
        gp_best = pooled([w["gp"]["kernels"][w["gp"]["best_on_targets"]] for w in ws])
        rows.append(
            {
                "series": name,
                "windows": len(ws),
                "targets": model["n"],
                "model": model,
                "gp": gp,
                "gp_best_on_targets": gp_best,
                "ll_gap": model["ll"] - gp["ll"],
                "rmse_ratio": model["rmse"] / gp["rmse"],
                "statuses": [w["model"]["calibration"]["status"] for w in ws],
                "prequential_coverage_95": float(np.mean([w["model"]["calibration"]["coverage"]["0.95"] for w in ws])),
                "gp_kernels": [w["gp"]["chosen"] for w in ws],
            }
        )
    return rows


def average(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Means over series (each series alike) of the unit-free figures and of the log likelihoods."""

    def mean(get: Any) -> float:
        return float(np.mean([get(r) for r in rows]))

    return {
        "model_ll": mean(lambda r: r["model"]["ll"]),
        "gp_ll": mean(lambda r: r["gp"]["ll"]),
        "gp_best_on_targets_ll": mean(lambda r: r["gp_best_on_targets"]["ll"]),
        "ll_gap": mean(lambda r: r["ll_gap"]),
        "ll_gap_best_on_targets": mean(lambda r: r["model"]["ll"] - r["gp_best_on_targets"]["ll"]),
        "rmse_ratio": mean(lambda r: r["rmse_ratio"]),
        "model_coverage_95": mean(lambda r: r["model"]["coverage_95"]),
        "gp_coverage_95": mean(lambda r: r["gp"]["coverage_95"]),
        "prequential_coverage_95": mean(lambda r: r["prequential_coverage_95"]),
        "miscalibrated_series": sum("miscalibrated" in r["statuses"] for r in rows),
    }


def run(checkpoint: Path, model: str, y_mode: str, quick: bool, which: str = "development") -> dict[str, Any]:
    """Score the model (through the service) and the fitted GP on every window of a set."""
    windows = real_windows(which)
    if quick:
        first = {}
        for w in windows:
            first.setdefault(f"{w.package}/{w.name}", w)
        windows = list(first.values())[:QUICK_SERIES]
    t0 = time.perf_counter()
    records = [
        {"series": f"{w.package}/{w.name}", "key": w.key, "start": w.start, "n_context": len(w.x_context),
         "n_target": len(w.x_target), "x_low": w.x_low, "x_high": w.x_high}
        for w in windows
    ]  # fmt: skip
    for record, window in zip(records, windows, strict=True):
        record["gp"] = gp_window(window)
    gp_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    with served(checkpoint, model) as url, CMANPClient(url) as client:
        for record, window in zip(records, windows, strict=True):
            record["model"] = model_window(client, window, model, y_mode)
            print(f"{record['key']}: model ll {record['model']['ll']:.3f}, GP ll "
                  f"{record['gp']['kernels'][record['gp']['chosen']]['ll']:.3f}", flush=True)  # fmt: skip
    rows = series_rows(records)
    return {
        "checkpoint": str(checkpoint),
        "model": model,
        "y_transform": y_mode,
        "set": which,
        "quick": quick,
        "gp_seconds": gp_seconds,
        "service_seconds": time.perf_counter() - t0,
        "at_bounds": [
            f"{r['key']} {k}: {', '.join(s['at_bounds'])}"
            for r in records
            for k, s in r["gp"]["kernels"].items()
            if s["at_bounds"]
        ],
        "series": rows,
        "average": average(rows),
        "windows": records,
    }


def report(result: dict[str, Any]) -> None:
    print("\n".join(real_data_section(result)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="name the sessions use; default: the checkpoint's file stem")
    p.add_argument(
        "--checkpoint", type=Path, help=f"default: checkpoints/MODEL.safetensors with --model, else {CHECKPOINT}"
    )
    p.add_argument("--y-transform", choices=Y_TRANSFORMS, default="context")
    p.add_argument("--set", choices=tuple(SETS), default="development", help="which real-data set")
    p.add_argument("--quick", action="store_true", help="three windows, for CI: checks the harness, not the numbers")
    p.add_argument("--out", type=Path, help="JSON file, or a directory for real_data.json; default bench/out/")
    args = p.parse_args(argv)
    checkpoint = args.checkpoint or Path(f"checkpoints/{args.model}.safetensors" if args.model else CHECKPOINT)
    if not checkpoint.is_file():
        raise SystemExit(f"no checkpoint at {checkpoint}")
    out = args.out or OUT_DIR
    name = "real_data.json" if args.set == "development" else f"real_data_{args.set.replace('-', '_')}.json"
    out = out / name if out.suffix != ".json" else out
    result = run(checkpoint, args.model or checkpoint.stem, args.y_transform, args.quick, args.set)
    report(result)
    write_json(out, result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
