"""Fixtures: a small random-init model (fast), and the shipped checkpoint when it is present."""

from pathlib import Path

import pytest
import torch

from model import CMANP, CMHP, CMANPANDConfig, CMANPConfig, CMHPConfig, load_checkpoint
from model.checkpoint import build_model

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "cmanp-gp-rbf.safetensors"
# The default model: same architecture, other weights (a broad prior); the exactness suite runs on it too.
GENERAL = CHECKPOINT.with_name("cmanp-gp-general.safetensors")
SMALL = CMANPConfig(d_model=32, n_heads=4, n_blocks=3, n_latents=16, ff_width=64, embed_depth=2)
SMALL_AND = CMANPANDConfig(**SMALL.to_dict(), block_size=8, cov_features=4, cov_layers=1, cov_kernels=3)  # a joint head
SMALL_EVENTS = CMHPConfig(num_marks=3, d_model=32, n_heads=4, n_blocks=2, n_latents=8, ff_width=64, components=4)
# With damped Fourier sums of the history (model.event_spectrum): 3 bands of 4 frequencies.
SMALL_SPECTRUM = CMHPConfig(**{**SMALL_EVENTS.to_dict(), "spectrum_bands": 3, "spectrum_per_band": 4})
SMALL_2D = CMANPConfig(**{**SMALL.to_dict(), "dim_x": 2})  # pixel coordinates in: the image family's inputs
SMALL_FOURIER = CMANPConfig(**{**SMALL.to_dict(), "fourier_features": 4, "fourier_periods": (0.2, 4.0)})


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def small_model(seed: int = 0, cfg: CMANPConfig = SMALL) -> CMANP:
    torch.manual_seed(seed)
    net = build_model(cfg).eval()
    # Random init leaves the null points at zero; perturb them so tests exercise them too.
    with torch.no_grad():
        net.encoder.data_attn.null_score.normal_()
        net.encoder.data_attn.null_value.normal_()
    return net


def small_cmhp(seed: int = 0, cfg: CMHPConfig = SMALL_EVENTS) -> CMHP:
    """A random-init event model with perturbed null points (the small model, events config); a
    spectrum's read-out, zero at init, is perturbed too, so its features move the forecasts."""
    net = small_model(seed, cfg=cfg)
    if net.spectrum_proj is not None:
        with torch.no_grad():
            net.spectrum_proj[-1].weight.normal_(0, 0.3)
    return net


@pytest.fixture(scope="session")
def small() -> CMANP:
    return small_model()


@pytest.fixture(scope="session", params=["small", "small-2d", "small-fourier", "shipped", "general"])
def net(request: pytest.FixtureRequest) -> CMANP:
    """Each exactness test runs on random models (dim_x 1 and 2, Fourier features of x) and on both
    trained ones (sharper attention)."""
    if request.param in ("small-2d", "small-fourier"):
        return small_model(cfg=SMALL_2D if request.param == "small-2d" else SMALL_FOURIER)
    return small_or_shipped(request.param, small_model(), GENERAL if request.param == "general" else CHECKPOINT)


def small_or_shipped(which: str, small: CMANP, shipped: Path) -> CMANP:
    """``small`` for "small"; else the checkpoint at ``shipped``, or a skip when it is absent."""
    if which == "small":
        return small
    if not shipped.exists():
        pytest.skip(f"no shipped checkpoint at {shipped}")
    return load_checkpoint(shipped)


def random_points(n: int, cfg: CMANPConfig, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, n, cfg.dim_x, generator=g) * 4 - 2
    y = torch.sin(3 * x.sum(-1, keepdim=True)) + 0.1 * torch.randn(batch, n, cfg.dim_y, generator=g)
    return x, y


def query_points(n: int, dim_x: int, batch: int = 1, low: float = -2.0, high: float = 2.0) -> torch.Tensor:
    """Queries [batch, n, dim_x] over [low, high]^dim_x: evenly spaced in 1-D, a fixed uniform draw
    in more dimensions (a diagonal would leave most of the plane untested); the same in every row."""
    if dim_x == 1:
        return torch.linspace(low, high, n).view(1, n, 1).expand(batch, n, 1)
    u = torch.rand(1, n, dim_x, generator=torch.Generator().manual_seed(n))
    return (low + (high - low) * u).expand(batch, n, dim_x)


@pytest.fixture(scope="module")
def state(small):
    """A state of two sessions of 20 points each, from the small model."""
    x, y = random_points(20, small.cfg, batch=2)
    with torch.no_grad():
        return small.condition(x, y)
