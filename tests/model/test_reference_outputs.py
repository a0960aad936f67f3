"""The shipped checkpoints give the outputs recorded before the issue-23 split of ``model/``.

``fixtures/reference.npz`` was written by ``fixtures/make_reference.py`` with the code of commit
80f82a4 (one file for blocks, encoder and heads); its ``and/`` keys were re-recorded when the joint
checkpoint was replaced (sessions 14 and 15). The split moved code between files and composed
the joint model from public parts, but kept each tensor operation and its order: on the CPU that
recorded the fixture every output was bit-for-bit the same (CI at 4e61172). Another CPU picks other
vector kernels for the same float32 operations (an AVX2 AMD EPYC differs by up to 4e-6 relative,
state blobs by their last bits), so float outputs are compared within ``RTOL`` of their scale, and
exactly what involves no float arithmetic: fingerprints, tensor names, the empty state's bytes.
The state blobs written then must load now and predict the same numbers.
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
# Hashes of states built by float arithmetic: equal only on the recording CPU's kernels.
STATE_HASHES = {"conditioned_state", "streamed_state_sha256", "merged_state_sha256"}
RTOL = 2e-5  # of max(1, the largest recorded magnitude): float32 rounding, 100x below any real change


def assert_close(now: np.ndarray, expected: np.ndarray, what: str) -> None:
    tolerance = RTOL * max(1.0, float(np.abs(expected).max()))
    difference = float(np.abs(now.astype(np.float64) - expected).max())
    assert difference <= tolerance, f"{what} differs from the recorded output by {difference:.2e}"


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


def test_outputs_are_the_recorded_ones(reference, recorded):
    name, _, now = recorded
    keys = SHARED_KEYS + (JOINT_KEYS if name == "and" else [])
    assert set(now) == {*keys, "xc", "yc", "xq", "yq"}
    for key in keys:
        expected = reference[f"{name}/{key}"]
        assert now[key].dtype == expected.dtype and now[key].shape == expected.shape, key
        if expected.dtype.kind == "f":
            assert_close(now[key], expected, f"{name}/{key}")
        elif key not in STATE_HASHES:
            assert np.array_equal(now[key], expected), f"{name}/{key} differs from the recorded output"


def test_a_state_blob_written_before_the_split_loads_and_predicts_the_same(reference, recorded):
    name, net, _ = recorded
    state = net.state_from_bytes(reference[f"{name}/conditioned_state"].tobytes())
    xq = torch.from_numpy(reference[f"{name}/xq"])
    with torch.no_grad():
        mean, var = net.predict(state, xq)
        assert_close(mean.numpy(), reference[f"{name}/conditioned_mean"], "mean")
        assert_close(var.numpy(), reference[f"{name}/conditioned_var"], "variance")
        if name == "and":
            g = torch.Generator().manual_seed(SAMPLE_SEED)
            paths = net.sample(state, xq, NUM_SAMPLES, block_size=JOINT_BLOCK, generator=g)
            assert_close(paths.numpy(), reference["and/samples"], "samples")


def test_the_empty_state_blob_is_the_one_new_sessions_got(reference, recorded):
    name, net, _ = recorded
    blob = net.empty_state().to_bytes()
    assert hashlib.sha256(blob).digest() == hashlib.sha256(reference[f"{name}/empty_state"].tobytes()).digest()


def test_parameters_come_in_the_state_dict_order(recorded):
    """``net.parameters()`` (what the optimiser's moments are indexed by) runs in state-dict order,
    which the fixture pins: a training state saved before the split resumes with its moments in place."""
    _, net, _ = recorded
    assert [id(p) for p in net.parameters()] == [id(t) for t in net.state_dict(keep_vars=True).values()]
