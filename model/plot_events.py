"""Plot an event model on one held-out Hawkes stream: its intensity beside the true one.

python -m model.plot_events --checkpoint checkpoints/cmhp-hawkes-exp.safetensors --out checkpoints/cmhp-hawkes-exp.png

The model's forecast after each event is a waiting-time density f and mark probabilities p_k;
its intensity at a time s after the latest event is the hazard of that density times p_k,
f(s) / S(s) * p_k. A point process is fixed by its intensity, so this is the model's whole
forecast drawn on the same axes as the true process's lambda_k(t). The stream is drawn from the
training prior with a seed the training stream never uses.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from model.checkpoint import load_checkpoint  # noqa: E402
from model.cmhp import CMHP  # noqa: E402
from model.data.hawkes import HawkesPrior, simulate_hawkes  # noqa: E402
from model.plot import save_figure  # noqa: E402


@torch.no_grad()
def model_intensity(net: CMHP, times: Tensor, marks: Tensor, at: Tensor) -> Tensor:
    """The model's intensity of each mark at the times ``at`` [G] (sorted, after the first event):
    [G, M], each time read from the state of the events strictly before it, as the true one."""
    out = torch.empty(len(at), net.cfg.num_marks, dtype=torch.float64)
    state, folded = net.empty_state(1), 0
    for start, end in _runs(times, at):
        if end == start:
            continue
        before = int(torch.searchsorted(times, at[start], right=False))  # events strictly before
        if before > folded:
            state = net.update(state, times[folded:before].view(1, -1), marks[folded:before].view(1, -1))
            folded = before
        now = at[start:end]
        tiled = state.tile(len(now))
        per_mark = [
            net.log_prob_next(tiled, now, torch.full((len(now),), k), now=now) for k in range(net.cfg.num_marks)
        ]
        out[start:end] = torch.stack(per_mark, dim=-1).exp()
    return out


def _runs(times: Tensor, at: Tensor) -> list[tuple[int, int]]:
    """Index ranges of ``at`` that share the same events strictly before them."""
    counts = torch.searchsorted(times, at, right=False)
    edges = [0, *(torch.nonzero(counts.diff()).view(-1) + 1).tolist(), len(at)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--events", type=int, default=160, help="events in the stream")
    p.add_argument("--shown", type=int, default=60, help="the last this many events are drawn")
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args(argv)

    net = load_checkpoint(args.checkpoint)
    if not isinstance(net, CMHP):
        p.error(f"{args.checkpoint} is a {net.architecture}, not an event model")
    g = torch.Generator().manual_seed(args.seed)
    params = HawkesPrior(num_marks=net.cfg.num_marks).sample(1, g)
    # A window long enough to hold the stream's first ``events`` events (the simulation stops there).
    end = torch.tensor([100 * args.events / float(params.stationary_rate().sum())], dtype=torch.float64)
    batch = simulate_hawkes(params, end, args.events, g)
    times, marks = batch.sequence(0)
    first = times[max(0, len(times) - args.shown)]
    grid = torch.linspace(float(first), float(times[-1]), 1500, dtype=torch.float64)
    true = params.intensity(times, marks, grid)
    learned = model_intensity(net, times, marks, grid)

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True, height_ratios=[2, 1])
    axes[0].plot(grid, true.sum(-1), color="black", lw=1.2, label="true intensity (all marks)")
    axes[0].plot(grid, learned.sum(-1), color="tab:blue", lw=1.2, ls="--", label="CMHP intensity")
    shown = times >= first
    for k in range(net.cfg.num_marks):
        at = times[shown & (marks == k)]
        axes[0].plot(at, torch.zeros_like(at), "|", ms=12, color=colors[k % len(colors)], label=f"events, mark {k}")
        axes[1].plot(grid, true[:, k] / true.sum(-1), color=colors[k % len(colors)], lw=1.2)
        axes[1].plot(grid, learned[:, k] / learned.sum(-1), color=colors[k % len(colors)], lw=1.2, ls="--")
    axes[0].set_ylabel("events per time unit")
    axes[0].set_title(
        f"one held-out Hawkes stream (seed {args.seed}): the last {int(shown.sum())} of {len(times)} events; "
        f"state {len(net.empty_state().to_bytes()) / 1024:.0f} KiB at any length"
    )
    axes[0].legend(fontsize=7, loc="upper right")
    axes[1].set_ylabel("next mark: share")
    axes[1].set_xlabel("time (model units); solid: true process, dashed: CMHP")
    save_figure(fig, args.out)


if __name__ == "__main__":
    main()
