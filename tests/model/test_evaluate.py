"""The evaluation CLI scores through the streaming API; its numbers must equal the training path's."""

import json

import pytest
import torch

from model import save_checkpoint
from model.data.eval_sets import protocol_set, streaming_set
from model.evaluate import main
from model.gp_oracle import gp_joint_log_likelihood, gp_log_likelihood
from tests.model.conftest import SMALL_AND, small_model


@pytest.mark.parametrize("joint", [False, True], ids=["marginal", "joint"])
def test_protocol_eval_matches_the_training_forward_and_the_oracle(tmp_path, joint):
    # A CMANP-AND's training forward is its joint LL per target; a CMANP's, the marginal LL.
    net = small_model(cfg=SMALL_AND) if joint else small_model()
    ckpt, card = tmp_path / "m.safetensors", tmp_path / "m.json"
    save_checkpoint(net, ckpt)
    result = main(
        [
            "--checkpoint",
            str(ckpt),
            "--kernel",
            "matern",
            "--num-batches",
            "3",
            "--batch-size",
            "4",
            "--cache-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "r.json"),
            "--card-json",
            str(card),
        ]
        + (["--joint"] if joint else [])
    )
    batches = protocol_set("matern", 3, 4, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("protocol-matern-*.npz"))) == 1  # cached once
    with torch.no_grad():  # an independent path: the one-pass training forward
        forward = torch.cat([net.log_likelihood(b.xc, b.yc, b.xt, b.yt) for b in batches])
    oracle = torch.cat([(gp_joint_log_likelihood if joint else gp_log_likelihood)(b) for b in batches])
    assert abs(result["model"]["ll"] - forward.mean().item()) < 1e-5
    assert abs(result["oracle"]["ll"] - oracle.mean().item()) < 1e-9
    assert result["model"]["num_tasks"] == 12
    key = "matern_joint_ll" if joint else "matern_ll"
    assert json.loads(card.read_text())[key] == round(result["model"]["ll"], 4)


def test_streaming_eval_has_the_requested_sizes(tmp_path):
    net = small_model()
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(net, ckpt)
    result = main(
        [
            "--checkpoint",
            str(ckpt),
            "--context-sizes",
            "5,40",
            "--num-tasks",
            "6",
            "--num-targets",
            "7",
            "--cache-dir",
            str(tmp_path),
        ]
    )
    assert set(result["curve"]) == {"5", "40"}
    assert result["curve"]["40"]["model"]["num_tasks"] == 6
    batch = streaming_set(40, 6, 7, cache_dir=tmp_path)[0]
    assert batch.xc.shape[1:] == (40, 1) and batch.xt.shape[1:] == (7, 1)


def test_broad_eval_breaks_the_gaussian_noise_tasks_down_by_family(tmp_path):
    from model.data.eval_sets import broad_streaming_set
    from model.evaluate import model_log_likelihood

    net = small_model()
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(net, ckpt)
    args = ["--checkpoint", str(ckpt), "--kernel", "broad", "--context-sizes", "20", "--num-tasks", "48"]
    result = main([*args, "--num-targets", "10", "--out", str(tmp_path / "e.json")])["curve"]["20"]
    # Recomputed here from the same tasks: the gap is model minus oracle over one family's Gaussian tasks.
    batches = broad_streaming_set(20, 48, 10)
    model_ll = torch.cat([model_log_likelihood(net, b) for b in batches]).double()
    oracle_ll = torch.cat([gp_log_likelihood(b) for b in batches])
    exact = torch.cat([b.oracle_exact for b in batches])
    families = [f for b in batches for f in b.families()]
    by_family = result["gaussian_noise_by_family"]
    assert sum(f["gap"]["num_tasks"] for f in by_family.values()) == int(exact.sum())
    for family, scores in by_family.items():
        rows = torch.tensor([f == family for f in families]) & exact
        assert scores["gap"]["num_tasks"] == int(rows.sum())
        assert abs(scores["gap"]["ll"] - (model_ll[rows] - oracle_ll[rows]).mean().item()) < 1e-6
