"""The joint-model evaluation: its multi-block LL against block-by-block scoring through the public
API (joint_predict, then update with the true values), the exact GP's per-block split against its
joint density, and the CLI's output and card entries."""

import json

import pytest
import torch

from model import save_checkpoint
from model.data.eval_sets import joint_set
from model.evaluate_joint import gp_block_log_likelihoods, main, model_block_log_likelihoods, multi_block_ll
from model.gp_oracle import gp_joint_log_likelihood
from tests.model.conftest import SMALL_AND, small_model


def mvn_log_prob(mean: torch.Tensor, cov: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log N(y | mean, cov) of one output dimension: mean, y [B, m, 1], cov [B, 1, m, m] -> [B]."""
    dist = torch.distributions.MultivariateNormal(mean[..., 0].double(), covariance_matrix=cov[:, 0])
    return dist.log_prob(y[..., 0].double())


@pytest.fixture(scope="module")
def and_net():
    return small_model(cfg=SMALL_AND)  # block_size 8


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return joint_set("matern", 2, 4, num_targets=20, cache_dir=tmp_path_factory.mktemp("sets"))


def test_multi_block_ll_equals_block_by_block_scoring(and_net, tasks):
    for batch in tasks:
        got = model_block_log_likelihoods(and_net, batch)
        assert got.shape == (4, 3)  # 20 targets in blocks of 8, 8, 4
        with torch.no_grad():
            state, want = and_net.condition(batch.xc, batch.yc), []
            for lo, hi in ((0, 8), (8, 16), (16, 20)):
                xb, yb = batch.xt[:, lo:hi], batch.yt[:, lo:hi]
                want.append(mvn_log_prob(*and_net.joint_predict(state, xb), yb))
                state = and_net.update(state, xb, yb)
        torch.testing.assert_close(got, torch.stack(want, -1), rtol=1e-5, atol=1e-6)


def test_one_block_is_the_single_block_joint_ll(and_net, tmp_path):
    (batch,) = joint_set("rbf", 1, 4, num_targets=8, cache_dir=tmp_path)  # exactly one block
    result = multi_block_ll(and_net, [batch])
    with torch.no_grad():
        state = and_net.condition(batch.xc, batch.yc)
        single = mvn_log_prob(*and_net.joint_predict(state, batch.xt), batch.yt) / 8
    assert result["model"]["ll"] == pytest.approx(single.mean().item(), rel=1e-5)
    assert result["oracle"]["ll"] == pytest.approx(gp_joint_log_likelihood(batch).mean().item(), rel=1e-9)


def test_gp_blocks_add_up_to_the_joint_density(tasks):
    for batch in tasks:
        blocks = gp_block_log_likelihoods(batch, 8)
        torch.testing.assert_close(blocks.sum(-1), gp_joint_log_likelihood(batch) * 20, rtol=1e-9, atol=1e-9)


def test_cli_reports_and_writes_the_card(and_net, tmp_path):
    ckpt, card = tmp_path / "m.safetensors", tmp_path / "m.json"
    save_checkpoint(and_net, ckpt)
    card.write_text(json.dumps({"fingerprint": and_net.fingerprint, "rbf_joint_ll": 1.0}))
    args = ["--checkpoint", str(ckpt), "--kernel", "rbf", "--targets", "20", "--num-batches", "2"]
    args += ["--grid", "16", "--samples", "4", "--path-batches", "3", "--batch-size", "4"]
    result = main([*args, "--cache-dir", str(tmp_path), "--out", str(tmp_path / "r.json"), "--card-json", str(card)])
    assert json.loads((tmp_path / "r.json").read_text()) == result
    assert result["multi_block"]["model"]["num_tasks"] == 8 and len(result["multi_block"]["per_block"]["model"]) == 3
    paths = result["paths"]
    assert paths["grid"] == 16 and sum(paths["min_rank"]["model"]["histogram"]) == 12
    assert len(paths["min_rank"]["gp"]["histogram"]) == 5
    written = json.loads(card.read_text())
    assert written["rbf_joint_ll"] == 1.0  # the protocol figures stay
    assert written["rbf_multiblock_joint_ll"] == round(result["multi_block"]["model"]["ll"], 4)
    assert written["rbf_roughness_ratio"] == round(paths["roughness"]["model_ratio"]["mean"], 4)
    again = main([*args, "--cache-dir", str(tmp_path)])  # fixed seeds: the same numbers again
    assert {**again, "seconds": 0} == {**result, "seconds": 0}


def test_refuses_a_model_without_a_joint_head(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(small_model(), ckpt)
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(ckpt), "--cache-dir", str(tmp_path)])
