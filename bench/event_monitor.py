"""The event sessions' calibration monitor: its false alarms, and what it flags with the event model.

    python -m bench.event_monitor [--checkpoint FILE] [--null 80000] [--quick] [--out FILE]

Two measurements of ``service.kinds.events_calibration``'s verdict after a session's events:

- **false alarms**: simulated calibrated sessions of 50, 100, 200 and 400 events (uniform PITs,
  each event's mark drawn from random forecast probabilities): the share flagged, which the tests'
  levels promise to keep at or below ``ALPHA`` per check.
- **streams**, each of ``EVENTS`` events, scored by the event model exactly as the service scores a
  session's log, and judged after its last event: streams from the model's training prior (real
  misfit only, ideally none flagged), Hawkes streams at 10x the prior's rates (issue 18), and
  self-correcting streams (total rate exp(t - N(t)), a process more regular than any Hawkes one).
  Per family: how many are flagged, and by which test.

Seeds are fixed per family: in prior 101, 201, 301 (300 streams each), 10x 102, self-correcting
7 and 2027 (40 each; seeds not used to choose the tests, ``checkpoints/HISTORY.md`` session 21).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from bench.common import OUT_DIR, write_json
from model.data.events import EventBatch
from model.data.hawkes import HawkesPrior, simulate_hawkes, simulate_self_correcting
from service.kinds.events import EVENTS, EventParams, EventPost
from service.kinds.events_calibration import ALPHA, MARKS_LEVEL, SHAPE_LEVEL, SMOOTH_LEVEL, EventScores
from service.registry import ServedModel
from service.store import Session, Snapshot

CHECKPOINT = Path("checkpoints/cmhp-hawkes-exp.safetensors")
EVENTS_PER_STREAM = 200
NULL_SIZES = (50, 100, 200, 400)
FAMILIES: dict[str, tuple[str, int, tuple[int, ...]]] = {  # name -> (kind, streams per seed, seeds)
    "in prior": ("hawkes", 300, (101, 201, 301)),
    "Hawkes at 10x the rate": ("fast", 40, (102,)),
    "self-correcting": ("self-correcting", 40, (7, 2027)),
}
LEVELS = {"smooth": SMOOTH_LEVEL, "shape": SHAPE_LEVEL, "marks": MARKS_LEVEL}


def simulated(n: int, rng: np.random.Generator, pit: np.ndarray | None = None, skew: float = 0.0) -> EventScores:
    """Scores of n events: PITs as given (else uniform), random forecast mark probabilities, and marks
    drawn from them (``skew``: from probabilities tilted towards mark 0 by that many logits)."""
    u = rng.random(n) if pit is None else pit
    logits = 1.5 * rng.standard_normal((n, 3))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    truth = np.exp(logits + [skew, 0, 0]) / np.exp(logits + [skew, 0, 0]).sum(1, keepdims=True)
    marks = (truth.cumsum(1) < rng.random((n, 1))).sum(1)
    return EventScores.of_scores(torch.from_numpy(u), torch.zeros(n), torch.from_numpy(probs), torch.from_numpy(marks))


def hawkes(streams: int, seed: int, rate_factor: float = 1.0, events: int = EVENTS_PER_STREAM) -> EventBatch:
    """Streams from the event model's training prior, every rate scaled by ``rate_factor``."""
    g = torch.Generator().manual_seed(seed)
    params = HawkesPrior().sample(streams, g).scaled(rate_factor)
    end = 1e4 * events / params.stationary_rate().sum(-1)  # stops at ``events`` events
    return simulate_hawkes(params, end, events, g)


def self_correcting(streams: int, seed: int, events: int = EVENTS_PER_STREAM) -> EventBatch:
    """Issue 18's non-Hawkes stream: total rate exp(t - N(t)), uniform marks over 3."""
    g = torch.Generator().manual_seed(seed)
    end = torch.full((streams,), 1e9, dtype=torch.float64)
    return simulate_self_correcting(1.0, 1.0, torch.full((3,), 1 / 3), end, events, g)


def session_scores(model: ServedModel, batch: EventBatch) -> list[EventScores]:
    """Each stream's calibration sums after its events, scored as the service scores a session's log."""
    params = EventParams(0.0, 1.0, model.net.cfg.num_marks)
    scores = []
    for t, k, n in zip(batch.times, batch.marks, batch.lengths, strict=True):
        entry = EVENTS.encode(params, EventPost(t[:n].tolist(), k[:n].tolist()))
        session = Session("s", "t", model.name, model.fingerprint, "events", params.to_fields(), 0.0, 60, int(n), 1)
        scores.append(EVENTS.score_log(model, Snapshot(session, None, [entry.data], int(n), 0), scoring=True))
    return scores


def verdicts(model: ServedModel, batch: EventBatch) -> list[str]:
    """Each stream's status after its events."""
    return [s.verdict()[0] for s in session_scores(model, batch)]


def false_alarms(sessions: int, seed: int) -> dict[str, object]:
    """Verdicts on simulated calibrated sessions, as many at each of ``NULL_SIZES`` events."""
    rng = np.random.default_rng(seed)
    per_size = {}
    for n in NULL_SIZES:
        checks = sessions // len(NULL_SIZES)
        per_size[str(n)] = sum(simulated(n, rng).verdict()[0] == "miscalibrated" for _ in range(checks))
    flagged = sum(per_size.values())
    total = sessions // len(NULL_SIZES) * len(NULL_SIZES)
    return {"sessions": total, "flagged": flagged, "rate": flagged / total, "per_size": per_size, "alpha": ALPHA}


def family(model: ServedModel, kind: str, streams: int, seeds: tuple[int, ...]) -> dict[str, object]:
    """How many of a family's streams are flagged after their events, and by which tests."""
    flagged, by_test, total = 0, Counter[str](), 0
    for seed in seeds:
        batch = (
            self_correcting(streams, seed)
            if kind == "self-correcting"
            else hawkes(streams, seed, 10.0 if kind == "fast" else 1.0)
        )
        for scores in session_scores(model, batch):
            total += 1
            p = scores.p_values()
            failed = [name for name, level in LEVELS.items() if p[name] < level]
            flagged += scores.verdict()[0] == "miscalibrated"
            by_test.update(failed)
    return {
        "streams": total,
        "seeds": list(seeds),
        "flagged": flagged,
        "share": flagged / total,
        "by_test": dict(by_test),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    p.add_argument("--null", type=int, default=80_000, help="simulated calibrated sessions")
    p.add_argument("--null-seed", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="few sessions and streams: checks the harness, not the numbers")
    p.add_argument("--out", type=Path, default=OUT_DIR / "event_monitor.json")
    args = p.parse_args(argv)
    if args.quick:
        args.null = min(args.null, 400)
    torch.set_num_threads(1)
    start = time.time()
    null = false_alarms(args.null, args.null_seed)
    se = math.sqrt(null["rate"] * (1 - null["rate"]) / null["sessions"])  # type: ignore[operator]
    print(
        f"calibrated sessions: {null['flagged']} of {null['sessions']} flagged ({null['rate']:.2e} +- {se:.1e}; "
        f"ALPHA {ALPHA:g}); by size {null['per_size']}"
    )
    model = ServedModel.load(args.checkpoint)
    families = {}
    for name, (kind, streams, seeds) in FAMILIES.items():
        families[name] = family(model, kind, 4 if args.quick else streams, seeds)
        f = families[name]
        print(
            f"{name}: {f['flagged']} of {f['streams']} flagged after {EVENTS_PER_STREAM} events "
            f"(seeds {seeds}); by test {f['by_test']}"
        )
    result = {
        "checkpoint": str(args.checkpoint),
        "fingerprint": model.fingerprint,
        "events": EVENTS_PER_STREAM,
        "false_alarms": null,
        "families": families,
        "seconds": round(time.time() - start, 1),
    }
    write_json(args.out, result)
    print(f"wrote {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
