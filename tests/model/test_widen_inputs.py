"""``model.widen_inputs``: a model for d inputs that starts as the 1-D source read at the inputs' mean, and
a model with Fourier features of x that starts as its source."""

from __future__ import annotations

import pytest
import torch

from model import load_checkpoint
from model.widen_inputs import add_fourier_features, main, widen

from .conftest import SMALL, SMALL_2D, SMALL_AND, SMALL_FOURIER, small_model


@pytest.mark.parametrize("dim_x", [2, 3])
def test_the_widened_model_predicts_what_the_source_predicts_at_the_mean_input(dim_x: int) -> None:
    source = small_model(seed=3)
    widened = widen(source, dim_x, (-1.0, 1.0))
    g = torch.Generator().manual_seed(0)
    xc, xq = torch.rand(2, 40, dim_x, generator=g) * 2 - 1, torch.rand(2, 25, dim_x, generator=g) * 2 - 1
    yc = torch.randn(2, 40, 1, generator=g)
    with torch.no_grad():
        mean, var = widened.predict(widened.condition(xc, yc, chunk_size=7), xq)
        ref_mean, ref_var = source.predict(source.condition(xc.mean(-1, keepdim=True), yc), xq.mean(-1, keepdim=True))
    torch.testing.assert_close(mean, ref_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(var, ref_var, atol=1e-5, rtol=1e-5)
    assert widened.cfg.dim_x == dim_x and widened.cfg.x_range == (-1.0, 1.0)
    assert not torch.equal(mean, source.predict(source.condition(xc[..., :1], yc), xq[..., :1])[0])  # uses both


def test_it_refuses_what_it_cannot_widen() -> None:
    with pytest.raises(ValueError, match="1-D regression CMANP"):
        widen(small_model(cfg=SMALL_2D), 3, (-1.0, 1.0))
    for source in (small_model(cfg=SMALL_AND), small_model(cfg=SMALL_FOURIER)):
        with pytest.raises(ValueError, match="regression CMANP without Fourier features"):
            widen(source, 2, (-1.0, 1.0))
        with pytest.raises(ValueError, match="regression CMANP without Fourier features"):
            add_fourier_features(source, 4, (0.1, 8.0))
    with pytest.raises(ValueError, match="dim_x must be >= 2"):
        widen(small_model(), 1, (-1.0, 1.0))


def test_the_cli_writes_a_checkpoint_that_loads(tmp_path) -> None:
    from model.checkpoint import save_checkpoint

    save_checkpoint(small_model(), tmp_path / "source.safetensors")
    main(
        [
            "--checkpoint",
            str(tmp_path / "source.safetensors"),
            "--dim-x",
            "2",
            "--x-range",
            "-1",
            "1",
            "--out",
            str(tmp_path / "runs" / "wide.safetensors"),
        ]
    )
    wide = load_checkpoint(tmp_path / "runs" / "wide.safetensors")
    assert wide.cfg.dim_x == 2 and wide.info["widened_from"] == small_model().fingerprint


@pytest.mark.parametrize("dim_x", [1, 2])
def test_added_fourier_features_start_silent_and_then_learn(dim_x: int) -> None:
    source = small_model(seed=4, cfg=SMALL_2D if dim_x == 2 else SMALL)
    grown = add_fourier_features(source, 6, (0.1, 8.0))
    assert grown.cfg.fourier_features == 6 and grown.cfg.fourier_periods == (0.1, 8.0)
    g = torch.Generator().manual_seed(1)
    xc, xq = torch.rand(2, 30, dim_x, generator=g) * 4 - 2, torch.rand(2, 20, dim_x, generator=g) * 4 - 2
    yc, yq = torch.randn(2, 30, 1, generator=g), torch.randn(2, 20, 1, generator=g)
    with torch.no_grad():
        mean, var = grown.predict(grown.condition(xc, yc, chunk_size=7), xq)
        ref_mean, ref_var = source.predict(source.condition(xc, yc), xq)
    torch.testing.assert_close(mean, ref_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(var, ref_var, atol=1e-5, rtol=1e-5)
    # The silent columns get a gradient: training can start using the features from the first step.
    grown.train()
    grown.log_likelihood(xc, yc, xq, yq).sum().backward()
    for name in ("context_embed.0.weight", "query_embed.0.weight"):
        w = dict(grown.named_parameters())[name]
        features = slice(dim_x, dim_x * (1 + 2 * 6))
        assert torch.all(w.detach()[:, features] == 0) and w.grad[:, features].abs().sum() > 0
