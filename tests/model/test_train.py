"""Training: the curriculum's sizes, --resume continuing bit-for-bit, saving when stopped, and a
loop that trains any family whose source and model follow its interface."""

import json
import math
import signal
import subprocess
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from scipy.stats import norm

from model.checkpoint import load_checkpoint, save_checkpoint
from model.cmanp import CMANPConfig
from model.cmanp_and import CMANPAND
from model.data import DEFAULT_DATA
from model.data.gp import GPSampler
from model.data.regression import ContextCurriculum, RegressionSource
from model.train import Run, TrainConfig, data_spec, fit, lr_at, main, start, training_loss
from tests.model.conftest import SMALL_AND, SMALL_EVENTS, SMALL_SPECTRUM, small_cmhp, small_model

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


def test_resuming_with_moments_of_other_shapes_is_refused(tmp_path):
    main([*TINY, "--steps", "2", "--out", str(tmp_path / "a")])
    state = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    moments = state["optim"]["state"]
    first = next(i for i in sorted(moments) if moments[i]["exp_avg"].shape != moments[i + 1]["exp_avg"].shape)
    moments[first], moments[first + 1] = moments[first + 1], moments[first]  # as if two were registered swapped
    torch.save(state, tmp_path / "a" / "last.pt")
    with pytest.raises(ValueError, match="registered in another order"):
        main([*TINY, "--steps", "4", "--out", str(tmp_path / "a"), "--resume"])


def test_init_from_continues_at_the_recorded_step(tmp_path):
    main([*TINY, "--steps", "6", "--out", str(tmp_path / "a")])
    main([*TINY, "--steps", "9", "--out", str(tmp_path / "c"), "--init-from", str(tmp_path / "a" / "best.safetensors")])
    assert torch.load(tmp_path / "c" / "last.pt", weights_only=True)["step"] == 9


def test_a_warm_start_may_change_the_std_floor_but_nothing_else(tmp_path):
    main([*TINY, "--steps", "3", "--out", str(tmp_path / "a")])
    start = str(tmp_path / "a" / "best.safetensors")
    # The floor is a constant of the head: the weights carry over, and the new floor is the model's.
    main(
        [*TINY, "--steps", "1", "--min-std", "0.05", "--out", str(tmp_path / "b"), "--init-from", start, "--warm-start"]
    )
    assert load_checkpoint(tmp_path / "b" / "best.safetensors").cfg.min_std == 0.05
    with pytest.raises(ValueError, match="has config"):  # without --warm-start: a continued run keeps its config
        main([*TINY, "--steps", "4", "--min-std", "0.05", "--out", str(tmp_path / "c"), "--init-from", start])
    with pytest.raises(ValueError, match="has config"):  # another shape is another model
        main(
            [
                *TINY,
                "--steps",
                "1",
                "--ff-width",
                "16",
                "--out",
                str(tmp_path / "d"),
                "--init-from",
                start,
                "--warm-start",
            ]
        )


def test_curriculum_covers_protocol_long_and_empty_contexts():
    curriculum = ContextCurriculum(long_context_prob=0.3, empty_context_prob=0.1, long_context_max=300)
    source, g = RegressionSource(GPSampler("rbf"), curriculum), torch.Generator().manual_seed(0)
    sizes = [source.sample_batch(2, g).xc.shape[1] for _ in range(300)]
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


def test_an_unfrozen_base_can_train_at_a_fraction_of_the_heads_lr(tmp_path):
    main([*TINY, "--steps", "3", "--out", str(tmp_path / "base")])
    joint = [*TINY, "--architecture", "cmanp-and", "--cov-features", "3", "--cov-layers", "1", "--precision", "fp32"]
    main(
        [*joint, "--base-lr-scale", "0.1", "--steps", "4", "--out", str(tmp_path / "and")]
        + ["--init-from", str(tmp_path / "base" / "best.safetensors")]
    )
    state = torch.load(tmp_path / "and" / "last.pt", weights_only=True)
    head, base = state["optim"]["param_groups"]
    assert head["lr"] > 0 and base["lr"] == pytest.approx(0.1 * head["lr"], rel=1e-9)
    joint_tensors = sum(name.startswith("joint_head.") for name in state["model"])
    assert (len(head["params"]), len(base["params"])) == (joint_tensors, len(state["model"]) - joint_tensors)
    with pytest.raises(ValueError, match="base_lr_scale"):  # a frozen base has no lr to scale
        main([*joint, "--base-lr-scale", "0.1", "--freeze-base", "true", "--steps", "1", "--out", str(tmp_path / "x")])


def test_old_configs_keep_the_curriculum_in_train_and_it_moves_to_the_data_spec():
    old = {"data": {"kind": "broad"}, "train": {"steps": 5, "long_context_prob": 0.05}}
    data, train = data_spec(old, {"long_context_max": 300, "empty_context_prob": None})
    assert data == {"kind": "broad", "long_context_prob": 0.05, "long_context_max": 300} and train == {"steps": 5}
    assert data_spec({}, {})[0] == DEFAULT_DATA
    with pytest.raises(ValueError, match="both"):
        data_spec({"data": {"kind": "gp", "long_context_prob": 0.1}, "train": {"long_context_prob": 0.2}}, {})


@dataclass
class Sequences:
    """A batch of another family: padded event sequences (inter-event gaps [B, L]) and their lengths [B]."""

    gaps: torch.Tensor
    lengths: torch.Tensor

    def to(self, device):
        return Sequences(self.gaps.to(device), self.lengths.to(device))


class PoissonSequences:
    """Sequences of a Poisson process of rate 2, of random lengths 1..20."""

    def sample_batch(self, batch_size, generator):
        lengths = torch.randint(1, 21, (batch_size,), generator=generator)
        gaps = torch.empty(batch_size, 20).exponential_(2.0, generator=generator)
        return Sequences(gaps * (torch.arange(20) < lengths[:, None]), lengths)

    heldout_batch = sample_batch


class RateModel(torch.nn.Module):
    """A one-parameter event model: the negative log-likelihood per event of a constant rate."""

    architecture, trains_in_bf16, fingerprint = "toy-rate", False, "0" * 32
    cfg = SimpleNamespace(to_dict=dict)

    def __init__(self):
        super().__init__()
        self.log_rate = torch.nn.Parameter(torch.zeros(()))

    def event_log_likelihood(self, batch):  # [B]: per event, over each sequence's own events
        mask = torch.arange(batch.gaps.shape[1]) < batch.lengths[:, None]
        ll = (self.log_rate - self.log_rate.exp() * batch.gaps) * mask
        return ll.sum(1) / batch.lengths

    def loss(self, batch):
        return -self.event_log_likelihood(batch).mean()

    def heldout_score(self, batch):
        return self.event_log_likelihood(batch)


def test_the_loop_trains_a_family_with_its_own_batch_type(tmp_path):
    """A source and a model with another batch type plug into the loop as they are."""
    tc = TrainConfig(steps=150, lr=0.1, warmup_steps=1, eval_every=50, eval_batches=4, precision="fp32", compile=False)
    net = RateModel()
    run = Run(net, torch.optim.AdamW(net.parameters(), lr=tc.lr), torch.Generator().manual_seed(0))
    fit(run, PoissonSequences(), tc, tmp_path, record={"data": {"kind": "toy"}})
    assert run.step == 150 and torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 150
    assert abs(net.log_rate.exp().item() - 2.0) < 0.2  # the maximum-likelihood rate of the data
    # The exported best score is the mean log-likelihood per event of a rate-2 process at its own rate:
    # log 2 - 2 * E[gap] = log 2 - 1, within sampling error of the held-out set.
    with safe_open(str(tmp_path / "best.safetensors"), framework="pt") as f:
        info = json.loads(f.metadata()["info"])
    assert info["data"] == {"kind": "toy"} and abs(info["heldout_ll"] - (math.log(2.0) - 1.0)) < 0.15


def test_beta_nll_weighs_each_targets_nll_by_its_variance_and_leaves_the_weight_without_gradient():
    """The value against scipy's normal log-density, weighted by var^beta; at beta = 1 the mean's
    gradient is the squared error's, (mean - y) / (targets * tasks), not divided by the variance, and
    the std's is var * d NLL / d std = std - (y - mean)^2 / std (the weight is a constant)."""
    net = small_model()
    batch = GPSampler("rbf").sample(3, 5, 7, torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean, std = net(batch.xc, batch.yc, batch.xt)
    m, s, y = mean.double().numpy(), std.double().numpy(), batch.yt.double().numpy()
    for beta in (0.5, 1.0):
        want = (s ** (2 * beta) * -norm.logpdf(y, m, s)).mean()
        got = training_loss(net, nll_beta=beta)(batch)
        assert got.item() == pytest.approx(want, rel=1e-5)
    assert training_loss(net, nll_beta=0.0)(batch).item() == pytest.approx(-norm.logpdf(y, m, s).mean(), rel=1e-5)

    captured = {}
    original = net.head.forward

    def keep_outputs(z):
        outputs = original(z)
        for name, t in zip(("mean", "std"), outputs, strict=True):
            t.retain_grad()
            captured[name] = t
        return outputs

    net.head.forward = keep_outputs
    net.beta_nll_loss(batch, 1.0).backward()
    grad = {k: v.grad.double().numpy() for k, v in captured.items()}
    np.testing.assert_allclose(grad["mean"], (m - y) / y.size, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(grad["std"], (s - (y - m) ** 2 / s) / y.size, rtol=1e-4, atol=1e-9)


def test_beta_nll_is_refused_for_a_joint_model_and_for_negative_beta():
    with pytest.raises(ValueError, match="nll_beta"):
        training_loss(CMANPAND(SMALL_AND), nll_beta=0.5)
    with pytest.raises(ValueError, match="nll_beta"):
        training_loss(small_model(), nll_beta=-1.0)


def test_a_warm_start_may_add_an_event_spectrum_and_begins_as_the_model_it_starts_from(tmp_path):
    """The spectrum's read-out starts at zero: the new model forecasts as its checkpoint until it learns."""
    base = small_cmhp()
    save_checkpoint(base, tmp_path / "base.safetensors", info={"step": 5})
    run = start(SMALL_SPECTRUM, TrainConfig(), tmp_path / "last.pt", False, tmp_path / "base.safetensors", True)
    grown = run.net.eval()
    t = torch.tensor([[0.0, 0.4, 0.5, 3.0]], dtype=torch.float64)
    k = torch.tensor([[0, 2, 2, 1]])
    with torch.no_grad():
        a, b = base.next_event(base.condition(t, k)), grown.next_event(grown.condition(t, k))
    torch.testing.assert_close(a.quantiles, b.quantiles)
    assert grown.cfg.spectrum_bands == SMALL_SPECTRUM.spectrum_bands and run.step == 0
    with pytest.raises(ValueError, match="has config"):  # a continued run (no warm start) keeps its config
        start(SMALL_SPECTRUM, TrainConfig(), tmp_path / "last.pt", False, tmp_path / "base.safetensors", False)
    assert SMALL_EVENTS.spectrum_bands == 0


def test_an_option_of_another_architecture_is_refused(capsys):
    with pytest.raises(SystemExit):
        main([*TINY, "--steps", "1", "--spectrum-bands", "4"])
    assert "not options of the cmanp architecture" in capsys.readouterr().err
