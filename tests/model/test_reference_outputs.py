"""The shipped checkpoints give the outputs recorded before the issue-23 split of ``model/``.

``fixtures/reference.npz`` was written by ``fixtures/make_reference.py`` with the code of commit
80f82a4 (one file for blocks, encoder and heads). Every comparison here is bit-for-bit: the split
moved code between files and composed the joint model from public parts, but it kept each
tensor operation and its order, so no result rounds differently. The state blobs written then
must load now and predict the same numbers.
"""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from model import load_checkpoint
from tests.model.fixtures.make_reference import CHECKPOINTS, JOINT_BLOCK, NUM_SAMPLES, SAMPLE_SEED, record

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference.npz"
# The outputs of every model; the joint model has JOINT_KEYS too.
SHARED_KEYS = [
    "fingerprint",
    "state_dict_names",
    "empty_state",
    "prior_mean",
    "prior_var",
    "conditioned_state",
    "conditioned_mean",
    "conditioned_var",
    "streamed_state_sha256",
    "streamed_mean",
    "streamed_var",
    "merged_state_sha256",
    "merged_mean",
    "merged_var",
    "forward_mean",
    "forward_std",
    "forward_prior_mean",
    "forward_prior_std",
    "log_likelihood",
]
JOINT_KEYS = ["joint_mean", "joint_cov", "joint_log_prob", "samples"]


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def recorded(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module, dict[str, np.ndarray]]:
    name = request.param
    if not CHECKPOINTS[name].exists():
        pytest.skip(f"no checkpoint at {CHECKPOINTS[name]}")
    net = load_checkpoint(CHECKPOINTS[name])
    with torch.no_grad():
        return name, net, record(net, joint=name == "and")


def test_the_fixture_inputs_are_the_recorded_ones(reference, recorded):
    name, _, now = recorded
    for key in ("xc", "yc", "xq", "yq"):
        assert np.array_equal(now[key], reference[f"{name}/{key}"]), key


def test_outputs_are_bit_identical_to_the_recorded_ones(reference, recorded):
    name, _, now = recorded
    keys = SHARED_KEYS + (JOINT_KEYS if name == "and" else [])
    assert set(now) == {*keys, "xc", "yc", "xq", "yq"}
    for key in keys:
        expected = reference[f"{name}/{key}"]
        assert now[key].dtype == expected.dtype and now[key].shape == expected.shape, key
        assert np.array_equal(now[key], expected), f"{name}/{key} differs from the recorded output"


def test_a_state_blob_written_before_the_split_loads_and_predicts_the_same(reference, recorded):
    name, net, _ = recorded
    state = net.state_from_bytes(reference[f"{name}/conditioned_state"].tobytes())
    xq = torch.from_numpy(reference[f"{name}/xq"])
    with torch.no_grad():
        mean, var = net.predict(state, xq)
        assert np.array_equal(mean.numpy(), reference[f"{name}/conditioned_mean"])
        assert np.array_equal(var.numpy(), reference[f"{name}/conditioned_var"])
        if name == "and":
            g = torch.Generator().manual_seed(SAMPLE_SEED)
            paths = net.sample(state, xq, NUM_SAMPLES, block_size=JOINT_BLOCK, generator=g)
            assert np.array_equal(paths.numpy(), reference["and/samples"])


def test_the_empty_state_blob_is_the_one_new_sessions_got(reference, recorded):
    name, net, _ = recorded
    blob = net.empty_state().to_bytes()
    assert hashlib.sha256(blob).digest() == hashlib.sha256(reference[f"{name}/empty_state"].tobytes()).digest()


def test_parameters_come_in_the_state_dict_order(recorded):
    """``net.parameters()`` (what the optimiser's moments are indexed by) runs in state-dict order,
    which the fixture pins: a training state saved before the split resumes with its moments in place."""
    _, net, _ = recorded
    assert [id(p) for p in net.parameters()] == [id(t) for t in net.state_dict(keep_vars=True).values()]
