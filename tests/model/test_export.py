"""``model.export``: a run's last.pt weights as a checkpoint, with the run's record and its own step."""

import torch

from model.checkpoint import load_checkpoint, read_metadata
from model.export import main as export
from model.train import main as train

from .test_train import TINY

DIFFERENT = {"step", "train_seconds", "heldout_ll", "run_best_heldout_ll"}


def test_the_exported_checkpoint_holds_last_pt_s_weights_and_step(tmp_path):
    run = tmp_path / "run"
    train([*TINY, "--steps", "5", "--out", str(run)])  # eval at step 3 exports best.safetensors; last.pt is step 5
    export(["--run", str(run), "--out", str(tmp_path / "last.safetensors")])
    last = torch.load(run / "last.pt", weights_only=True)
    net = load_checkpoint(tmp_path / "last.safetensors")
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, last["model"][name]), name
    best = load_checkpoint(run / "best.safetensors")
    pairs = zip(net.state_dict().values(), best.state_dict().values(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)  # not a copy of best.safetensors
    info = read_metadata(tmp_path / "last.safetensors")["info"]
    best_info = read_metadata(run / "best.safetensors")["info"]
    assert (info["step"], best_info["step"]) == (5, 3)
    assert "heldout_ll" not in info and info["run_best_heldout_ll"] == last["best"]
    # the rest is the run's record, as best.safetensors has it
    assert {k: v for k, v in info.items() if k not in DIFFERENT} == {
        k: v for k, v in best_info.items() if k not in DIFFERENT
    }
