"""Predicts that queue for a worker are batched into one model call, with the same answers as alone."""

from __future__ import annotations

from dataclasses import replace

import anyio
import numpy as np
import pytest

from service.errors import CorruptStateError
from service.inference import Inference
from service.kinds.regression import REGRESSION, Predict, Predicted, RegressionParams, log_entry
from service.registry import ServedModel
from service.store import Session, Snapshot
from service.training_range import TrainingRange
from service.transforms import AffineMap
from tests.service.helpers import expected_prediction, sample_points


def _snapshot(
    model: ServedModel, x: np.ndarray, y: np.ndarray, logged: int, session_id: str = "s", version: int = 0
) -> Snapshot:
    """Session `session_id` holding x, y: the first points folded into the state, the last `logged` in the log."""
    net = model.net
    split = len(x) - logged
    state = net.empty_state()
    if split:
        state = net.update(state, *(np.asarray(a, np.float32)[None] for a in (x[:split], y[:split])))
    identity = AffineMap.identity(1)
    params = RegressionParams(identity, identity).to_fields()
    session = Session(session_id, "", model.name, model.fingerprint, REGRESSION.name, params, 0.0, 60, len(x), version)
    log = [log_entry(x[i : i + 1], y[i : i + 1]) for i in range(split, len(x))]
    return Snapshot(session, state.to_bytes(), log, logged, 0)


async def predict(inference: Inference, model: ServedModel, snapshot: Snapshot, xq: np.ndarray) -> Predicted:
    return await inference.answer(REGRESSION, model, Predict(snapshot, xq))


def tiny_model(net) -> ServedModel:
    return ServedModel("tiny", net, None, net.empty_state().to_bytes(), TrainingRange(net.cfg.x_range, None))


@pytest.mark.parametrize("max_batch", [1, 3, 16])
def test_batched_predicts_equal_single_predicts(tiny_net, max_batch: int) -> None:
    model = tiny_model(tiny_net)
    calls = []
    original = tiny_net.predict

    def counting_predict(state, xq, chunk_size=None):
        calls.append(state.batch_size)
        return original(state, xq, chunk_size)

    requests = []
    for i in range(7):  # different context sizes, logs and numbers of queries
        x, y = sample_points(5 + 3 * i, seed=i)
        xq = np.linspace(-2, 2, 4 + 5 * i, dtype=np.float64)[:, None]
        requests.append((x, y, xq, _snapshot(model, x, y, logged=i % 3, session_id=f"s{i}")))
    got: dict[int, Predicted] = {}
    inference = Inference(workers=1, torch_threads=1, max_batch=max_batch)

    async def one(i: int) -> None:
        _, _, xq, snapshot = requests[i]
        got[i] = await predict(inference, model, snapshot, xq.astype(np.float32))

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(len(requests)):
                tg.start_soon(one, i)

    tiny_net.predict = counting_predict
    try:
        anyio.run(run)
    finally:
        del tiny_net.predict
    for i, (x, y, xq, _) in enumerate(requests):
        mean, var = expected_prediction(tiny_net, x, y, xq)
        np.testing.assert_allclose(got[i].mean, mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[i].variance, var, rtol=1e-4, atol=1e-6)
    assert sum(calls) == len(requests) and max(calls) <= max_batch
    if max_batch > 1:  # one worker: the first runs alone, the others queue behind it and batch
        assert len(calls) < len(requests)


def test_a_broken_state_fails_only_its_own_request(tiny_net) -> None:
    model = tiny_model(tiny_net)
    x, y = sample_points(6, seed=1)
    good = _snapshot(model, x, y, logged=2)
    bad_session = replace(good.session, session_id="bad")
    bad = Snapshot(bad_session, good.state[:-1] + bytes([good.state[-1] ^ 1]), good.log, 2, 0)  # bad checksum
    inference = Inference(workers=1, torch_threads=1, max_batch=8)
    xq = np.zeros((3, 1), np.float32)
    outcomes: dict[str, object] = {}

    async def one(name: str, snapshot: Snapshot) -> None:
        try:
            outcomes[name] = await predict(inference, model, snapshot, xq)
        except CorruptStateError as e:
            outcomes[name] = e

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            for name, snapshot in (("first", good), ("bad", bad), ("good", good)):
                tg.start_soon(one, name, snapshot)

    anyio.run(run)
    assert isinstance(outcomes["bad"], CorruptStateError) and "checksum" in outcomes["bad"].detail
    np.testing.assert_allclose(outcomes["good"].mean, outcomes["first"].mean, rtol=1e-6)


def test_predicts_on_one_session_share_its_newest_snapshot(tiny_net) -> None:
    """Predicts on a hot session that queue together, each with a snapshot a few posts apart, are
    all answered from the newest (one state, one row of the model call), with its counters: each
    still includes every point posted before it."""
    model = tiny_model(tiny_net)
    x, y = sample_points(12, seed=5)
    xq = np.linspace(-2, 2, 5, dtype=np.float32)[:, None]
    other = _snapshot(model, x[:3], y[:3], logged=1, session_id="other")
    versions = (1, 3, 2, 4)  # posts applied when each request read its snapshot (not in order)
    hot = [_snapshot(model, x[: 8 + v], y[: 8 + v], logged=2 + v, session_id="hot", version=v) for v in versions]
    rows = []
    original = tiny_net.predict

    def counting_predict(state, xq, chunk_size=None):
        rows.append(state.batch_size)
        return original(state, xq, chunk_size)

    inference = Inference(workers=1, torch_threads=1, max_batch=16)
    got: dict[int, Predicted] = {}

    async def one(i: int, snapshot: Snapshot) -> None:
        got[i] = await predict(inference, model, snapshot, xq)

    async def run() -> None:
        async with anyio.create_task_group() as tg:  # one worker: they queue and batch
            for i, snapshot in enumerate([other, *hot]):
                tg.start_soon(one, i, snapshot)

    tiny_net.predict = counting_predict
    try:
        anyio.run(run)
    finally:
        del tiny_net.predict
    assert sum(rows) == 2  # one row for the other session, one for all four hot predicts
    mean, variance = expected_prediction(tiny_net, x[:12], y[:12], xq)  # the newest: all 12 points
    for i in range(1, 5):
        assert (got[i].session.version, got[i].session.num_points) == (4, 12)
        np.testing.assert_allclose(got[i].mean, mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[i].variance, variance, rtol=1e-4, atol=1e-6)
