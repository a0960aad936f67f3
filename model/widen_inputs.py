"""A regression CMANP with wider inputs, started from a trained one: more x dimensions, or Fourier features.

    python -m model.widen_inputs --checkpoint checkpoints/cmanp-gp-rbf.safetensors --dim-x 2 \
        --x-range -1 1 --out runs/mnist-init.safetensors
    python -m model.widen_inputs --checkpoint checkpoints/cmanp-gp-general.safetensors \
        --fourier-features 12 --fourier-periods 0.1 8 --out runs/general-fourier-init.safetensors

Why: trained from scratch on two input dimensions, the model stays at its unconditional solution
for thousands of steps, on digits and even on two functions +-sin(3 (x1 + x2)), which a 1-D model
learns in 600 steps (checkpoints/HISTORY.md, "cmanp-mnist"). Started from a 1-D model that already
conditions on its context, the 2-D model learned that task in 300 steps. So the image model starts
from a trained 1-D model.

The widened model reads x = (x_1, ..., x_d) as the source reads their mean: the first layer of the
context and query embeddings gets the source's x column divided by d in each of its d x columns,
and every other tensor is copied. At the start, widened(x, y) = source(mean(x), y) exactly; training
then tells the dimensions apart. ``x_range`` is the new model's own (the service maps user units onto
it); the source's range should contain the means of the new inputs.

Fourier features (``model.fourier_features``) are added with their first-layer weights at zero, so the
new model predicts exactly as the source does; training then reads the features it finds useful.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.cmanp import CMANP

# The first Linear of each embedding: its input is [x | y] (context) or x (queries), x first.
FIRST_LAYERS = ("context_embed.0.weight", "query_embed.0.weight")


def _check_plain(source: CMANP) -> None:
    if type(source) is not CMANP or source.cfg.fourier_features:
        raise ValueError(f"widening takes a regression CMANP without Fourier features, got {source.architecture}")


def widen(source: CMANP, dim_x: int, x_range: tuple[float, float]) -> CMANP:
    """A CMANP with ``dim_x`` inputs whose predictions at x equal ``source``'s at mean(x)."""
    _check_plain(source)
    if source.cfg.dim_x != 1:
        raise ValueError(f"widen takes a 1-D regression CMANP, got dim_x {source.cfg.dim_x}")
    if dim_x < 2:
        raise ValueError(f"dim_x must be >= 2, got {dim_x}")
    widened = CMANP(replace(source.cfg, dim_x=dim_x, x_range=x_range))
    weights = source.state_dict()
    for name in FIRST_LAYERS:
        w = weights[name]  # [D, 1 + dim_y] or [D, 1]: column 0 is x
        weights[name] = torch.cat([w[:, :1].expand(-1, dim_x) / dim_x, w[:, 1:]], dim=1)
    widened.load_state_dict(weights, strict=True)
    return widened.eval()


def add_fourier_features(source: CMANP, n_freqs: int, periods: tuple[float, float]) -> CMANP:
    """``source`` with ``n_freqs`` Fourier features of x; their weights start at zero, so it predicts as ``source``."""
    _check_plain(source)
    if n_freqs < 1:
        raise ValueError(f"n_freqs must be >= 1, got {n_freqs}")
    grown = CMANP(replace(source.cfg, fourier_features=n_freqs, fourier_periods=periods))
    dx = source.cfg.dim_x
    weights = source.state_dict()
    for name in FIRST_LAYERS:
        w = weights[name]  # columns: x (dx), then y for the context; the features go between them
        zeros = w.new_zeros(w.shape[0], 2 * n_freqs * dx)
        weights[name] = torch.cat([w[:, :dx], zeros, w[:, dx:]], dim=1)
    grown.load_state_dict(weights, strict=True)
    return grown.eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a regression CMANP without Fourier features")
    p.add_argument("--dim-x", type=int, help="more input dimensions (needs --x-range)")
    p.add_argument("--x-range", type=float, nargs=2, metavar=("LOW", "HIGH"))
    p.add_argument("--fourier-features", type=int, help="add this many Fourier features of x (after --dim-x)")
    p.add_argument("--fourier-periods", type=float, nargs=2, default=(0.1, 8.0), metavar=("LOW", "HIGH"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.dim_x is None and args.fourier_features is None:
        p.error("give --dim-x and --x-range, or --fourier-features, or both")
    if (args.dim_x is None) != (args.x_range is None):
        p.error("--dim-x and --x-range go together")
    source = load_checkpoint(args.checkpoint)
    widened = source if args.dim_x is None else widen(source, args.dim_x, tuple(args.x_range))
    if args.fourier_features is not None:
        widened = add_fourier_features(widened, args.fourier_features, tuple(args.fourier_periods))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    info = {"widened_from": source.fingerprint, "widened_from_path": str(args.checkpoint), "step": 0}
    print(f"{args.out}: fingerprint {save_checkpoint(widened, args.out, info=info)}")


if __name__ == "__main__":
    main()
