"""A figure of the model on real series beside the fitted GP: the picture of the default model's card.

    python -m bench.real_data_plot --checkpoint checkpoints/cmanp-gp-general.safetensors \
        --out checkpoints/cmanp-gp-general.png

For a few windows of the development set (``model.data.real_series``): the context (streamed in
time order), the held-out targets, the model's mean and 95% band, and the fitted GP's (ML-II on
the same context, ``bench.baselines.fitted_gp``). The model is run in process through its
streaming API with the session transforms a service session would use (x span onto [-2, 2], y by
the context's mean and standard deviation, which is what ``"y_transform": "auto"`` gives below
the first fold); the service gives the same numbers (tests/service/test_auto_scaling.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.baselines.fitted_gp import by_evidence, fit_both  # noqa: E402
from model.data.real_series import Window, real_windows  # noqa: E402
from model.plot import save_figure  # noqa: E402
from model.tiled import load_served  # noqa: E402

SHOWN = ("datasets/AirPassengers/0", "datasets/Nile/0", "datasets/lynx/0", "MASS/mcycle/0")
Z95 = 1.959964


def model_band(net: torch.nn.Module, w: Window, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's mean and standard deviation on the grid, in the series' units."""
    shift, scale = w.y_context.mean(), w.y_context.std()

    def to_x(v: np.ndarray) -> torch.Tensor:
        return torch.tensor(4.0 * (v - w.x_low) / (w.x_high - w.x_low) - 2.0).float().view(1, -1, 1)

    with torch.no_grad():
        state = net.update(
            net.empty_state(), to_x(w.x_context), torch.tensor((w.y_context - shift) / scale).float().view(1, -1, 1)
        )
        mean, var = net.predict(state, to_x(grid))
    return mean[0, :, 0].double().numpy() * scale + shift, np.sqrt(var[0, :, 0].double().numpy()) * scale


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    net = load_served(args.checkpoint)
    windows = {w.key: w for w in real_windows()}
    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    for ax, key in zip(axes.flat, SHOWN, strict=True):
        w = windows[key]
        grid = np.linspace(w.x_low, w.x_high, 300)
        mean, std = model_band(net, w, grid)
        gp = by_evidence(fit_both(w.x_context, w.y_context, w.x_low, w.x_high))
        gp_mean, gp_var = gp.predict(grid)
        ax.fill_between(grid, mean - Z95 * std, mean + Z95 * std, color="tab:blue", alpha=0.25, label="model 95%")
        ax.plot(grid, mean, color="tab:blue", lw=1.5, label="model mean")
        gp_std = np.sqrt(gp_var)
        ax.plot(grid, gp_mean, color="tab:orange", lw=1.2, label=f"fitted GP ({gp.kernel})")
        ax.plot(grid, gp_mean + Z95 * gp_std, color="tab:orange", lw=0.8, ls="--")
        ax.plot(grid, gp_mean - Z95 * gp_std, color="tab:orange", lw=0.8, ls="--", label="fitted GP 95%")
        ax.scatter(w.x_context, w.y_context, s=10, color="black", zorder=3, label="context (streamed)")
        ax.scatter(w.x_target, w.y_target, s=14, facecolors="none", edgecolors="tab:red", zorder=3, label="held out")
        ax.set_title(f"{w.package}/{w.name}: {len(w.x_context)} points in context")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{args.checkpoint.stem} on real series it never saw, beside a GP fitted to the same context")
    save_figure(fig, args.out)


if __name__ == "__main__":
    main()
