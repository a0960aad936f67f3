"""How much a constant-size event state can know about a Hawkes process's decay beta.

    python -m bench.event_information [--streams 3000] [--events 200] [--mle 150] [--out FILE]

Streams of ``--events`` events from the event model's training prior (``HawkesPrior``), those with
a branching radius above 0.3 (below it beta hardly shapes the stream). At each stream's last event,
three readings, each scored by the cross-validated R^2 of log beta:

- **CMAB sums**: what the CMHP's accumulators are made of, per mark ``log sum_j exp(-w (a - t_j))``
  at 48 log-spaced rates w from 1e-3 to 1e2 (the shipped model's learned rates lie in 0.005 to 10):
  a gradient-boosted regression of log beta on them.
- **spectrum**: the band-averaged log periodogram of ``model.event_spectrum`` at the config the
  event model uses (24 bands of 8 frequencies, memories Q = 32 and 128), the same regression.
- **maximum likelihood**: log of the per-sequence fit's beta (``model.hawkes_mle.fit``) on the first
  ``--mle`` streams, scored as it is (nothing is fitted to the targets, so no cross-validation; a
  regression on it could only do better): what the whole history says, through the true model
  family. On 150 streams its R^2 has a standard error of roughly 0.05.

The first two are constant-size and exactly mergeable; the gap between them is what the spectrum
adds (``docs/MODEL.md`` section 9).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import cross_val_score

from model.cmhp import CMHPConfig
from model.data.hawkes import HawkesPrior, simulate_hawkes
from model.event_spectrum import EventSpectrum
from model.hawkes_mle import fit

MIN_RADIUS = 0.3
RATES = np.logspace(-3, 2, 48)


def prior_streams(streams: int, events: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times [S, n], marks [S, n] and betas [S] of the full-length streams with radius > MIN_RADIUS."""
    g = torch.Generator().manual_seed(seed)
    params = HawkesPrior().sample(streams, g)
    batch = simulate_hawkes(params, 1e4 * events / params.stationary_rate().sum(-1), events, g)
    keep = (batch.lengths == events) & (params.spectral_radius() > MIN_RADIUS)
    return batch.times[keep].numpy(), batch.marks[keep].numpy(), params.beta[keep].numpy()


def cmab_sums(times: np.ndarray, marks: np.ndarray, num_marks: int) -> np.ndarray:
    """[S, M * len(RATES)]: per mark, the log of the events' exponentially decayed count at the last event."""
    age = times[:, -1:] - times
    onehot = np.stack([marks == m for m in range(num_marks)], -1).astype(float)
    sums = np.einsum("snw,snm->smw", np.exp(-age[..., None] * RATES), onehot)
    return np.log(sums + 1e-30).reshape(len(times), -1)


def spectrum_features(times: np.ndarray, cfg: CMHPConfig) -> np.ndarray:
    """[S, features]: the model's spectral features of each whole stream (all marks pooled)."""
    spectrum = EventSpectrum(cfg.spectrum_bands, cfg.spectrum_per_band, cfg.spectrum_range, cfg.spectrum_qualities)
    age = torch.from_numpy(times[:, -1:] - times)
    sums = spectrum.add(spectrum.empty(len(times)), age)
    return spectrum.features(sums).numpy()


def r_squared(features: np.ndarray, target: np.ndarray, seed: int) -> float:
    """Mean 3-fold cross-validated R^2 of a gradient-boosted regression."""
    model = HistGradientBoostingRegressor(max_iter=300, random_state=seed)
    return float(cross_val_score(model, features, target, cv=3, scoring="r2").mean())


def information(streams: int, events: int, mle: int, seed: int = 7) -> dict:
    cfg = CMHPConfig(spectrum_bands=24)
    times, marks, beta = prior_streams(streams, events, seed)
    target = np.log(beta)
    fitted = np.log([float(fit(times[i], marks[i], cfg.num_marks, restarts=2).params.beta[0]) for i in range(mle)])
    return {
        "streams": len(times),
        "events": events,
        "r2_log_beta": {
            "cmab_sums": r_squared(cmab_sums(times, marks, cfg.num_marks), target, seed),
            "spectrum": r_squared(spectrum_features(times, cfg), target, seed),
            "maximum_likelihood": float(1 - np.mean((fitted - target[:mle]) ** 2) / np.var(target[:mle])),
        },
        "mle_streams": mle,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=3000)
    p.add_argument("--events", type=int, default=200)
    p.add_argument("--mle", type=int, default=150)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = information(args.streams, args.events, args.mle)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
