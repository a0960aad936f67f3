"""Plot a session growing: the model's mean +- 2 sigma beside the exact GP, at several context sizes.

python -m model.plot --checkpoint checkpoints/cmanp-gp-rbf.safetensors --out checkpoints/cmanp-gp-rbf.png

With ``--samples S`` and a CMANP-AND checkpoint, S joint sample paths over the grid are drawn too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from model.checkpoint import load_checkpoint  # noqa: E402
from model.data.gp import NOISE_STD, GPBatch, kernel_matrix  # noqa: E402
from model.gp_oracle import gp_predict  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sizes", default="5,20,100")
    p.add_argument("--length", type=float, default=0.4)
    p.add_argument("--scale", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--samples", type=int, default=0, help="joint sample paths to draw (a CMANP-AND checkpoint)")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    net = load_checkpoint(args.checkpoint)
    if args.samples and not net.can_sample:
        p.error(f"--samples needs a CMANP-AND checkpoint; {args.checkpoint} is a {net.architecture}")
    lo, hi = net.cfg.x_range
    g = torch.Generator().manual_seed(args.seed)
    grid = torch.linspace(lo, hi, 200, dtype=torch.float64).view(1, -1, 1)
    xc = lo + (hi - lo) * torch.rand(1, max(sizes), 1, generator=g, dtype=torch.float64)
    x_all = torch.cat([xc, grid], 1)
    hyp = (torch.tensor([args.length]), torch.tensor([args.scale]), torch.tensor([1.0]))
    cov = kernel_matrix("rbf", x_all, x_all, *hyp) + 1e-8 * torch.eye(x_all.shape[1], dtype=torch.float64)
    f = torch.linalg.cholesky(cov) @ torch.randn(1, x_all.shape[1], 1, generator=g, dtype=torch.float64)
    yc = f[:, : xc.shape[1]] + NOISE_STD * torch.randn(xc.shape, generator=g, dtype=torch.float64)
    f_grid = f[:, xc.shape[1] :]

    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.4), sharey=True)
    state, seen = net.empty_state(), 0
    for ax, n in zip(axes, sizes, strict=True):
        with torch.no_grad():  # stream the new points into the session, as the service does
            state = net.update(state, xc[:, seen:n].float(), yc[:, seen:n].float())
            mean, var = net.predict(state, grid.float())
            paths = net.sample(state, grid.float(), args.samples, generator=g)[:, 0, :, 0] if args.samples else []
        seen = n
        batch = GPBatch(xc[:, :n], yc[:, :n], grid, f_grid, *hyp, kernel="rbf")
        gp_mean, gp_var = gp_predict(batch)
        x = grid[0, :, 0].numpy()
        ax.fill_between(
            x,
            gp_mean[0] - 2 * gp_var[0].sqrt(),
            gp_mean[0] + 2 * gp_var[0].sqrt(),
            color="tab:gray",
            alpha=0.25,
            label="exact GP ± 2σ",
        )
        ax.plot(x, gp_mean[0], color="tab:gray", lw=1)
        m, s = mean[0, :, 0].numpy(), var[0, :, 0].sqrt().numpy()
        ax.plot(x, m, color="tab:blue", lw=1.5, label="CMANP mean")
        ax.plot(x, m - 2 * s, color="tab:blue", lw=0.8, ls="--", label="CMANP ± 2σ")
        ax.plot(x, m + 2 * s, color="tab:blue", lw=0.8, ls="--")
        for i, path in enumerate(paths):
            ax.plot(x, path.numpy(), color="tab:green", lw=0.6, alpha=0.7, label=None if i else "joint samples")
        ax.plot(x, f_grid[0, :, 0], color="black", lw=0.8, alpha=0.6, label="true function")
        ax.scatter(xc[0, :n, 0], yc[0, :n, 0], s=10, color="tab:red", zorder=3, label="context")
        ax.set_title(f"{n} points, state {len(state.to_bytes()) / 1024:.0f} KiB")
    axes[0].legend(loc="lower left", fontsize=7)
    save_figure(fig, args.out)


def save_figure(fig: plt.Figure, out: Path) -> None:
    """Lay the figure out and write it to ``out`` (its folder made if missing), as every card's figure is."""
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
