"""Plot image completion as a session reveals pixels: for a few held-out images, the revealed
pixels, the model's mean and standard deviation, and the fitted GP's mean, at several N.

    python -m model.plot_images --checkpoint checkpoints/cmanp-mnist.safetensors --out checkpoints/cmanp-mnist.png

The tasks are ``model.evaluate_images``' completion tasks (nested reveals of the first held-out
images of its seeded order), so the figure shows images the evaluation scores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.checkpoint import load_checkpoint  # noqa: E402
from model.data.images import DATASETS, ImageBatch  # noqa: E402
from model.evaluate_images import (  # noqa: E402
    GP_RESTARTS,
    Predictor,
    completion_tasks,
    gp_predictor,
    model_predictor,
)
from model.plot import save_figure  # noqa: E402

COLUMNS = ("image", "revealed", "model mean", "model std", "GP mean")


def to_grid(values: torch.Tensor, pixels: torch.Tensor, side: int) -> np.ndarray:
    """Values at row-major pixel indices, as a ``side x side`` image; pixels not given are NaN."""
    grid = np.full(side * side, np.nan)
    grid[pixels.numpy()] = values.double().numpy()
    return grid.reshape(side, side)


def panels(
    batch: ImageBatch, side: int, net_predict: Predictor, gp_predict: Predictor | None
) -> list[list[np.ndarray]]:
    """Per task, as images: the whole image, the revealed pixels (hidden ones NaN), the model's mean and
    std, and (if any) the GP's mean."""
    revealed = batch.pixels[:, : batch.xc.shape[1]]
    truth = torch.cat([batch.yc, batch.yt], 1)
    mean, variance = net_predict(batch)
    gp_mean = gp_predict(batch)[0] if gp_predict is not None else None
    rows = []
    for task in range(len(batch.pixels)):
        every = batch.pixels[task]
        row = [to_grid(truth[task, :, 0], every, side), to_grid(batch.yc[task, :, 0], revealed[task], side)]
        row += [to_grid(mean[task, :, 0], every, side), to_grid(variance[task, :, 0].sqrt(), every, side)]
        if gp_mean is not None:
            row.append(to_grid(gp_mean[task, :, 0], every, side))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dataset", choices=DATASETS, default="mnist")
    p.add_argument("--sizes", default="10,50,200", help="revealed pixels, comma-separated")
    p.add_argument("--num-images", type=int, default=3)
    p.add_argument("--gp-restarts", type=int, default=GP_RESTARTS)
    p.add_argument("--no-gp", action="store_true")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    net = load_checkpoint(args.checkpoint)
    net_predict = model_predictor(net)
    gp_predict = None if args.no_gp else gp_predictor(net.cfg.min_std, args.gp_restarts)
    columns = COLUMNS[: 4 if args.no_gp else 5]

    fig, axes = plt.subplots(
        args.num_images * len(sizes), len(columns), figsize=(1.6 * len(columns), 1.6 * args.num_images * len(sizes))
    )
    axes = np.asarray(axes).reshape(args.num_images * len(sizes), len(columns))
    gray = plt.get_cmap("gray").with_extremes(bad="tab:blue")  # hidden pixels in blue
    for j, n in enumerate(sizes):
        batch = completion_tasks(args.dataset, n, args.num_images, args.num_images)[0]
        side = round(batch.pixels.shape[1] ** 0.5)
        for i, row in enumerate(panels(batch, side, net_predict, gp_predict)):
            for k, (image, name) in enumerate(zip(row, columns, strict=True)):
                ax = axes[i * len(sizes) + j, k]
                std = name == "model std"
                ax.imshow(image, cmap="viridis" if std else gray, vmin=0 if std else -0.5, vmax=0.5)
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 1:
                    ax.set_title(f"{n} revealed", fontsize=8)
                elif i == j == 0:
                    ax.set_title(name, fontsize=8)
    save_figure(fig, args.out)


if __name__ == "__main__":
    main()
