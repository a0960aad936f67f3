"""Training: the curriculum's sizes, --resume continuing bit-for-bit, and saving when stopped."""

import signal
import subprocess
import sys

import pytest
import torch

from model.checkpoint import load_checkpoint
from model.cmanp import CMANPConfig
from model.data.gp import GPSampler
from model.train import TrainConfig, lr_at, main, sample_training_batch

TINY = [
    "--d-model",
    "16",
    "--n-heads",
    "2",
    "--n-blocks",
    "2",
    "--n-latents",
    "8",
    "--ff-width",
    "32",
    "--embed-depth",
    "2",
    "--batch-size",
    "4",
    "--eval-every",
    "3",
    "--eval-batches",
    "2",
    "--warmup-steps",
    "2",
    "--long-context-max",
    "80",
    "--compile",  # eager here: the compiled path has its own (slow) tests
    "false",
]


def weights(path):
    return torch.load(path, weights_only=True)["model"]


# Compiled, it also continues bit-for-bit (checked once), but 3 compilations cost minutes.
@pytest.mark.parametrize("speed", [["--precision", "fp32"], ["--precision", "bf16"]], ids=["fp32", "bf16"])
def test_resume_continues_exactly(tmp_path, speed):
    main([*TINY, *speed, "--steps", "8", "--out", str(tmp_path / "a")])
    main([*TINY, *speed, "--steps", "8", "--run-steps", "5", "--out", str(tmp_path / "b")])
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["step"] == 5
    main([*TINY, *speed, "--steps", "8", "--out", str(tmp_path / "b"), "--resume"])
    a, b = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "best.safetensors").exists()


def test_init_from_continues_at_the_recorded_step(tmp_path):
    main([*TINY, "--steps", "6", "--out", str(tmp_path / "a")])
    main([*TINY, "--steps", "9", "--out", str(tmp_path / "c"), "--init-from", str(tmp_path / "a" / "best.safetensors")])
    assert torch.load(tmp_path / "c" / "last.pt", weights_only=True)["step"] == 9


def test_curriculum_covers_protocol_long_and_empty_contexts():
    tc = TrainConfig(batch_size=2, long_context_prob=0.3, empty_context_prob=0.1, long_context_max=300)
    sampler, g = GPSampler("rbf"), torch.Generator().manual_seed(0)
    sizes = [sample_training_batch(sampler, tc, g).xc.shape[1] for _ in range(300)]
    assert 0 in sizes and max(sizes) > 46 and max(sizes) <= 300
    assert sum(3 <= n <= 46 for n in sizes) > 150


def test_schedule_warms_up_then_decays_to_zero():
    tc = TrainConfig(steps=1000, warmup_steps=100, lr=1e-3)
    assert lr_at(0, tc) < lr_at(99, tc) <= 1e-3
    assert lr_at(500, tc) < lr_at(100, tc) and lr_at(1000, tc) < 1e-9
    assert CMANPConfig().n_latents == 128  # the default config is the paper's


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_background_run_saves_its_state(tmp_path, sig):
    """Regression: a run started with `nohup ... &` ignores SIGINT, and SIGTERM skipped the save."""

    def like_a_background_job() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "model.train", *TINY, "--steps", "1000000", "--out", str(out)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=like_a_background_job
    )
    try:
        for line in proc.stdout:
            if line.startswith("step 3:"):  # past the first held-out evaluation: training is under way
                break
        proc.send_signal(sig)
        assert proc.wait(timeout=60) != -signal.SIGKILL
        assert "stopped at step" in proc.stdout.read()
    finally:
        proc.kill()
    assert torch.load(out / "last.pt", weights_only=True)["step"] >= 3


def test_joint_head_trains_alone_on_a_plain_cmanp(tmp_path):
    main([*TINY, "--steps", "3", "--out", str(tmp_path / "base")])  # eval at step 3 exports best.safetensors
    base = load_checkpoint(tmp_path / "base" / "best.safetensors").state_dict()
    main(
        [*TINY, "--architecture", "cmanp-and", "--cov-features", "3", "--cov-layers", "1", "--freeze-base", "true"]
        + ["--precision", "fp32"]
        + ["--steps", "3", "--out", str(tmp_path / "and"), "--init-from", str(tmp_path / "base" / "best.safetensors")]
    )
    joint = weights(tmp_path / "and" / "last.pt")
    assert all(torch.equal(joint[k], base[k]) for k in base)  # the CMANP's weights are untouched
    assert not torch.equal(joint["joint_head.mean.1.weight"], base["head.1.weight"])  # the joint head trained
    with pytest.raises(SystemExit):  # argparse refuses a non-boolean
        main([*TINY, "--freeze-base", "maybe"])
