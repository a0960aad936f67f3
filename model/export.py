"""Export a training run's latest weights (``<run>/last.pt``) as a checkpoint.

    python -m model.export --run runs/mnist --out runs/mnist/last.safetensors

The loop exports ``best.safetensors`` whenever its held-out score improves, but that score is a
few fixed batches: on image tasks, where one over-confident pixel costs thousands of nats, it
swings by a nat between evaluations and "best" can be a lucky step. The end of the cosine schedule
can be the better model, so an evaluation should compare both (checkpoints/HISTORY.md).
The new checkpoint takes ``best.safetensors``'s info (config record, data, recipe) with the step,
elapsed seconds and the run's best score from ``last.pt``; ``heldout_ll`` is dropped, because it
was measured on other weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint, save_checkpoint


def export_last(run: Path, out: Path) -> str:
    """Write ``run``'s last.pt weights to ``out``; returns the fingerprint."""
    net = load_checkpoint(run / "best.safetensors")  # the run's architecture, config and record
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    net.load_state_dict(state["model"], strict=True)
    info = {k: v for k, v in net.info.items() if k != "heldout_ll"}
    info |= {"step": state["step"], "train_seconds": state["elapsed"], "run_best_heldout_ll": state["best"]}
    return save_checkpoint(net.eval(), out, info=info)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a model.train --out folder (last.pt, best.safetensors)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    print(f"{args.out}: fingerprint {export_last(args.run, args.out)}")


if __name__ == "__main__":
    main()
