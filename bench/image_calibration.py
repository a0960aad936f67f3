"""What an image model's sessions say about their own calibration, on held-out digits and on faces (issue 19).

    python -m bench.image_calibration --checkpoint checkpoints/cmanp-mnist.safetensors [--images 25] [--context 200]

The model, through the real service (``bench.real_data.served``). Per image, one session with
``x_transform`` bounds = the pixel grid (rows and columns 0..side-1) and ``y_transform`` = the
intensities' units onto the training units [-0.5, 0.5] (MNIST 0..255, faces 0..1, as the packages
ship them). A random ordering of the image's pixels (seeded per image): the first ``--context`` are
posted ``--chunk`` per request, as a user filling in an image would; then the session's prequential
calibration report (``GET /v1/sessions/{id}``) is read, and the remaining pixels are predicted and
scored (log likelihood per pixel in training units, share inside the central 95% interval): what the
report should describe.

Held-out digits are the images of the model's own task family never trained on; the faces are out of
distribution for a digit model (grey-level photographs, not pen strokes on black). Writes JSON (default
bench/out/image_calibration.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from statistics import NormalDist, median
from typing import Any

import numpy as np

from bench.common import OUT_DIR, write_json
from bench.real_data import served
from model.data.images import Dataset, image_set
from service.client import CMANPClient

Z_95 = NormalDist().inv_cdf(0.975)
UNITS: dict[Dataset, tuple[float, float]] = {"mnist": (0.0, 255.0), "faces": (0.0, 1.0)}  # as shipped: low, high


def image_session(
    client: CMANPClient, dataset: Dataset, index: int, context: int, chunk: int, seed: int
) -> dict[str, Any]:
    """Fill one image's session with ``context`` random pixels, read its report, score the other pixels."""
    images = image_set(dataset, "heldout")
    side = images.side
    low, high = UNITS[dataset]
    values = (images.values[index].double().numpy() + 0.5) * (high - low) + low  # back to the package's units
    rows, cols = np.divmod(np.arange(side * side), side)
    grid = np.stack([rows, cols], 1).astype(np.float64)
    order = np.random.default_rng([seed, index]).permutation(side * side)
    seen, unseen = order[:context], order[context:]
    session = client.create_session(
        x_transform={"low": [0, 0], "high": [side - 1, side - 1]},
        y_transform={"shift": (low + high) / 2, "scale": high - low},
    )
    sid = session.session_id
    for start in range(0, context, chunk):
        pixels = seen[start : start + chunk]
        client.add_context(sid, grid[pixels], values[pixels, None])
    report = client.get_session(sid).calibration
    prediction = client.predict(sid, grid[unseen])
    client.delete_session(sid)
    scale = high - low  # scores in training units, comparable across the two datasets
    y = values[unseen] / scale
    mean, variance = prediction.mean[:, 0] / scale, prediction.variance[:, 0] / scale**2
    z = (y - mean) / np.sqrt(variance)
    return {
        "index": index,
        "status": report["status"],
        "reasons": report["reasons"],
        "reported_coverage_95": report["coverage"].get("0.95"),
        "reported_residual_variance": report["standardised_residual_variance"],
        "fresh_log_likelihood": float(np.mean(-0.5 * z**2 - 0.5 * np.log(2 * np.pi * variance))),
        "fresh_coverage_95": float(np.mean(np.abs(z) <= Z_95)),
        "fresh_residual_variance": float(np.var(z)),
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean_of(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    return {
        "images": len(rows),
        "status": dict(Counter(r["status"] for r in rows)),
        "reported_coverage_95": mean_of("reported_coverage_95"),
        "reported_residual_variance_median": median(r["reported_residual_variance"] for r in rows),
        "fresh_log_likelihood": mean_of("fresh_log_likelihood"),
        "fresh_coverage_95": mean_of("fresh_coverage_95"),
        "fresh_residual_variance_median": median(r["fresh_residual_variance"] for r in rows),
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| images | sessions | status | reported 95% cov. | reported z variance (median) | "
        "fresh LL per pixel | fresh 95% cov. | fresh z variance (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["summary"].items():
        status = ", ".join(f"{k} {v}" for k, v in sorted(s["status"].items()))
        lines.append(
            f"| {name} | {s['images']} | {status} | {s['reported_coverage_95']:.3f} | "
            f"{s['reported_residual_variance_median']:.2f} | {s['fresh_log_likelihood']:.3f} | "
            f"{s['fresh_coverage_95']:.3f} | {s['fresh_residual_variance_median']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/cmanp-mnist.safetensors"))
    p.add_argument("--images", type=int, default=25, help="images per dataset: the first ones of each held-out set")
    p.add_argument("--context", type=int, default=200, help="pixels posted per image (the protocol's largest N)")
    p.add_argument("--chunk", type=int, default=10, help="pixels per post")
    p.add_argument("--seed", type=int, default=19)
    p.add_argument("--out", type=Path, default=OUT_DIR / "image_calibration.json")
    args = p.parse_args(argv)
    datasets: tuple[Dataset, ...] = ("mnist", "faces")
    result: dict[str, Any] = {"checkpoint": str(args.checkpoint), "context": args.context, "chunk": args.chunk}
    with served(args.checkpoint, args.checkpoint.stem) as url, CMANPClient(url) as client:
        per_image = {
            d: [image_session(client, d, i, args.context, args.chunk, args.seed) for i in range(args.images)]
            for d in datasets
        }
    result["images"] = per_image
    result["summary"] = {d: summary(rows) for d, rows in per_image.items()}
    write_json(args.out, result)
    print(table(result))
    return result


if __name__ == "__main__":
    main()
