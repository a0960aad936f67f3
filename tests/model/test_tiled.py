"""Tiled sessions (model/tiled.py): exact streaming, an independent reference of the pyramid, the
state's format and size, and the quality gain on long sessions that is its reason to exist."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model import load_checkpoint
from model.data.eval_sets import broad_streaming_set
from model.gp_oracle import gp_log_likelihood
from model.state import CMANPState
from model.tiled import TiledNP, TilingConfig, load_served

REPO = Path(__file__).resolve().parents[2]
GENERAL = REPO / "checkpoints" / "cmanp-gp-general.safetensors"
TILING = TilingConfig(levels=(1, 2, 4), min_points=6.0, overlap=0.25, blend=0.1)


@pytest.fixture(scope="module")
def plain() -> torch.nn.Module:
    torch.manual_seed(0)
    from model.cmanp import CMANP, CMANPConfig

    return CMANP(CMANPConfig(d_model=32, n_heads=2, n_blocks=2, n_latents=8, ff_width=32)).eval()


@pytest.fixture(scope="module")
def tiled(plain: torch.nn.Module) -> TiledNP:
    return TiledNP(plain, TILING)


def points(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, n, 1, generator=g) * 4.4 - 2.2  # a few beyond the range, as a session may post
    return x, torch.sin(3 * x) + 0.1 * torch.randn(1, n, 1, generator=g)


def reference(plain: torch.nn.Module, x: np.ndarray, y: np.ndarray, xq: np.ndarray, cfg: TilingConfig) -> tuple:
    """The pyramid written out by hand, one tile and one query at a time: each tile's points mapped
    onto [-2, 2] and conditioned on by the plain model, its prediction mixed with trapezoid weights
    within the level and count-driven weights across levels."""
    lo, hi = -2.0, 2.0
    levels = []
    for k in cfg.levels:
        width = (hi - lo) / k
        reach = cfg.overlap * width if k > 1 else 0.0
        tiles = []
        for j in range(k):
            a, b = lo + j * width - reach, lo + (j + 1) * width + reach
            inside = [(xi >= a and xi <= b) or (j == 0 and xi < a) or (j == k - 1 and xi > b) for xi in x]
            zoom = lambda v, a=a, b=b: lo + (hi - lo) * (v - a) / (b - a)  # noqa: E731
            state = plain.empty_state()
            if any(inside):
                sel = np.array(inside)
                state = plain.update(
                    state,
                    torch.tensor(zoom(x[sel])).float().view(1, -1, 1),
                    torch.tensor(y[sel]).float().view(1, -1, 1),
                )
            mean, var = plain.predict(state, torch.tensor(zoom(xq)).float().view(1, -1, 1))
            tiles.append((lo + (j + 0.5) * width, width, sum(inside), mean[0, :, 0].numpy(), var[0, :, 0].numpy()))
        levels.append(tiles)
    out_mean, out_var = [], []
    for i, q in enumerate(xq):
        comps, take_prev = [], []
        for tiles in levels:
            w = []
            for t, (c, width, _, _, _) in enumerate(tiles):
                ramp = cfg.blend * width
                wt = min(max((0.5 * width + ramp - abs(q - c)) / (2 * ramp), 0.0), 1.0)
                if (t == 0 and q < c) or (t == len(tiles) - 1 and q > c):
                    wt = 1.0
                w.append(wt)
            w = np.array(w) / sum(w)
            count = sum(wi * tile[2] for wi, tile in zip(w, tiles, strict=True))
            ramp = cfg.full_points - cfg.min_points
            take = 1.0 if not take_prev else min(max((count - cfg.min_points) / ramp, 0.0), 1.0)
            take_prev.append(take)
            comps.append([(wi, tile[3][i], tile[4][i]) for wi, tile in zip(w, tiles, strict=True)])
        weights = [take_prev[lv] * np.prod([1 - t for t in take_prev[lv + 1 :]]) for lv in range(len(levels))]
        mix = [(lw * w, m, v) for lw, level in zip(weights, comps, strict=True) for w, m, v in level]
        mean = sum(w * m for w, m, _ in mix)
        out_mean.append(mean)
        out_var.append(sum(w * (v + (m - mean) ** 2) for w, m, v in mix))
    return np.array(out_mean), np.array(out_var)


@pytest.mark.parametrize(
    ("cfg", "n"),
    # 19 points: each third reaches about half the range, so its count (~10) is inside the 8-11 ramp.
    [(TILING, 80), (TilingConfig(levels=(1, 3), min_points=8.0, full_points=11.0), 19)],
    ids=["ramp 6-12", "ramp 8-11"],
)
def test_predictions_match_a_hand_written_pyramid(plain: torch.nn.Module, cfg: TilingConfig, n: int) -> None:
    tiled = TiledNP(plain, cfg)
    x, y = points(n, seed=1)
    xq = torch.linspace(-2.3, 2.3, 47).view(1, -1, 1)
    with torch.no_grad():
        mean, var = tiled.predict(tiled.condition(x, y), xq)
        ref_mean, ref_var = reference(plain, x.flatten().numpy(), y.flatten().numpy(), xq.flatten().numpy(), cfg)
    np.testing.assert_allclose(mean.flatten().numpy(), ref_mean, atol=1e-5)
    np.testing.assert_allclose(var.flatten().numpy(), ref_var, rtol=1e-4, atol=1e-6)


def test_full_points_sets_where_the_finer_level_has_taken_over(plain: torch.nn.Module) -> None:
    """The hand-written pyramid above checks the formula; this, that the setting is not ignored."""
    x, y = points(19, seed=1)
    xq = torch.linspace(-2, 2, 30).view(1, -1, 1)
    means = []
    with torch.no_grad():
        for full in (11.0, 30.0):
            tiled = TiledNP(plain, TilingConfig(levels=(1, 3), min_points=8.0, full_points=full))
            means.append(tiled.predict(tiled.condition(x, y), xq)[0])
    assert (means[0] - means[1]).abs().max() > 1e-3  # a longer ramp gives the finer level less weight


def test_a_short_session_predicts_as_the_plain_model(plain: torch.nn.Module, tiled: TiledNP) -> None:
    x, y = points(5, seed=2)  # every finer tile holds fewer than min_points: level 1 alone answers
    xq = torch.linspace(-2, 2, 30).view(1, -1, 1)
    with torch.no_grad():
        got, want = tiled.predict(tiled.condition(x, y), xq), plain.predict(plain.condition(x, y), xq)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("how", ["one at a time", "random chunks", "shuffled", "merged partition"])
def test_streaming_in_any_order_gives_the_batch_prediction(tiled: TiledNP, how: str) -> None:
    x, y = points(60, seed=3)
    xq = torch.linspace(-2, 2, 25).view(1, -1, 1)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        want = tiled.predict(tiled.condition(x, y), xq)
        if how == "merged partition":
            side = torch.rand(60, generator=g) < 0.5
            state = tiled.merge(tiled.condition(x[:, side], y[:, side]), tiled.condition(x[:, ~side], y[:, ~side]))
        else:
            order = torch.randperm(60, generator=g) if how == "shuffled" else torch.arange(60)
            state, i = tiled.empty_state(), 0
            while i < 60:
                k = 1 if how == "one at a time" else int(torch.randint(1, 9, (1,), generator=g))
                state = tiled.update(state, x[:, order[i : i + k]], y[:, order[i : i + k]])
                i += k
        got = tiled.predict(state, xq)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_sessions_batched_together_predict_as_each_alone(tiled: TiledNP) -> None:
    (xa, ya), (xb, yb) = points(40, seed=5), points(7, seed=6)
    xq = torch.linspace(-2, 2, 11).view(1, -1, 1)
    with torch.no_grad():
        a, b = tiled.condition(xa, ya), tiled.condition(xb, yb)
        both = tiled.predict(CMANPState.concat([a, b]), xq.expand(2, -1, -1))
        for i, state in enumerate((a, b)):
            torch.testing.assert_close(both[0][i : i + 1], tiled.predict(state, xq)[0], atol=1e-6, rtol=1e-6)


def test_the_mean_has_no_jumps_at_tile_edges(tiled: TiledNP) -> None:
    x, y = points(200, seed=7)
    grid = torch.linspace(-2, 2, 4001).view(1, -1, 1)  # steps of 1e-3 across every tile edge
    with torch.no_grad():
        mean, _ = tiled.predict(tiled.condition(x, y), grid)
    assert mean.diff(dim=1).abs().max() < 0.02


def test_the_state_blob_is_constant_in_size_and_round_trips(plain: torch.nn.Module, tiled: TiledNP) -> None:
    sizes = []
    for n in (1, 10, 1000):
        x, y = points(n, seed=n)
        state = tiled.condition(x, y)
        blob = state.to_bytes()
        sizes.append(len(blob))
        again = tiled.state_from_bytes(blob)
        torch.testing.assert_close(again.log_norm, state.log_norm)
    plain_bytes = len(plain.empty_state().to_bytes())
    assert sizes[0] == sizes[1] == sizes[2] > TILING.num_tiles * (plain_bytes - 100)


def test_states_of_another_model_are_refused(plain: torch.nn.Module, tiled: TiledNP) -> None:
    x, y = points(3, seed=8)
    with pytest.raises(ValueError, match="built by model"):
        tiled.update(plain.empty_state(), x, y)
    with pytest.raises(ValueError):
        tiled.state_from_bytes(plain.empty_state().to_bytes())
    assert tiled.fingerprint != plain.fingerprint


def test_bad_points_are_refused_with_the_plain_models_messages(tiled: TiledNP) -> None:
    state = tiled.empty_state()
    with pytest.raises(ValueError, match="NaN or Inf"):
        tiled.update(state, torch.tensor([[[float("nan")]]]), torch.zeros(1, 1, 1))
    with pytest.raises(ValueError, match="points"):
        tiled.update(state, torch.zeros(1, 2, 1), torch.zeros(1, 3, 1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"levels": (2, 4)},
        {"levels": (1, 4, 2)},
        {"min_points": 0},
        {"min_points": 10, "full_points": 10},
        {"min_points": 10, "full_points": float("nan")},
        {"min_points": float("nan")},
        {"blend": 0.3, "overlap": 0.2},
    ],
)
def test_bad_tilings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TilingConfig(**kwargs)


@pytest.mark.skipif(not GENERAL.exists(), reason="the shipped default model is not in this checkout")
def test_tiling_beats_the_plain_model_on_long_held_out_sessions() -> None:
    """Why tiling exists: on 500-point sessions from the broad prior (held out, beside the exact GP
    with each task's true kernel as the ceiling) the served, tiled model scores higher than the same
    weights without tiles, and stays below the ceiling where the GP is the Bayes predictor."""
    tiled = load_served(GENERAL)
    plain = load_checkpoint(GENERAL)
    assert isinstance(tiled, TiledNP)
    torch.set_num_threads(1)
    scores: dict[str, list[torch.Tensor]] = {"tiled": [], "plain": [], "oracle": [], "exact": []}
    with torch.no_grad():
        for batch in broad_streaming_set(500, num_tasks=16, num_targets=50, batch_size=16):
            for name, net in (("tiled", tiled), ("plain", plain)):
                mean, var = net.predict(net.condition(batch.xc, batch.yc), batch.xt)
                ll = torch.distributions.Normal(mean, var.sqrt()).log_prob(batch.yt).mean((1, 2))
                scores[name].append(ll)
            scores["oracle"].append(gp_log_likelihood(batch))
            scores["exact"].append(batch.oracle_exact)  # Gaussian noise of one variance: the GP is the ceiling
    tiled_ll, plain_ll, oracle, exact = (torch.cat(v) for v in scores.values())
    gain = tiled_ll - plain_ll
    assert gain.mean() > 3 * gain.std() / len(gain) ** 0.5, gain
    assert tiled_ll[exact].mean() < oracle[exact].mean()
