"""A batch of marked event sequences, padded to a common length.

Times are float64 and measured from each sequence's observation start (0): a sequence of a
long-running stream keeps sub-unit resolution at any absolute time. Padding (positions at or
after a sequence's length) holds time 0 and mark 0; the model never reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor


@dataclass
class EventBatch:
    times: Tensor  # [B, N] float64, non-decreasing within each sequence's length
    marks: Tensor  # [B, N] int64 in 0..M-1
    lengths: Tensor  # [B] int64, events per sequence (<= N)
    # [B] float64: the end of each observation window (no event in (last event, end]); None: the
    # window ends at the last event, so the likelihood has no survival term.
    end: Tensor | None = None
    # The true process when the data are simulated from one (a model.data.hawkes.HawkesParams; not
    # imported here, which would make an import cycle), for the oracle.
    params: Any = None
    # [B, N] bool: the events whose log-density a training loss reads (None: every event). A random
    # subset per sequence keeps a step's cost at the cheap prefix pass plus S decodes per sequence;
    # the loss weights each scored event by length / scored, an unbiased estimate of the full sum.
    scored: Tensor | None = None

    @property
    def mask(self) -> Tensor:
        """[B, N] bool: True at real events."""
        return torch.arange(self.times.shape[1], device=self.times.device) < self.lengths.unsqueeze(1)

    @property
    def batch_size(self) -> int:
        return self.times.shape[0]

    def to(self, device: torch.device | str) -> EventBatch:
        """The same batch on ``device`` (the true parameters stay where they are: the oracle is CPU code)."""
        end = None if self.end is None else self.end.to(device)
        scored = None if self.scored is None else self.scored.to(device)
        return replace(
            self,
            times=self.times.to(device),
            marks=self.marks.to(device),
            lengths=self.lengths.to(device),
            end=end,
            scored=scored,
        )

    def with_scored(self, per_sequence: int, generator: torch.Generator) -> EventBatch:
        """The batch with ``scored`` set to min(per_sequence, length) events of each sequence, drawn uniformly."""
        if per_sequence < 1:
            raise ValueError(f"per_sequence must be >= 1, got {per_sequence}")
        keys = torch.rand(self.times.shape, generator=generator, dtype=torch.float64).masked_fill(~self.mask, 2.0)
        rank = keys.argsort(dim=1).argsort(dim=1)  # each event's rank among its sequence's keys
        return replace(self, scored=(rank < per_sequence) & self.mask)

    def sequence(self, i: int) -> tuple[Tensor, Tensor]:
        """Times [n] and marks [n] of sequence ``i``, without padding."""
        n = int(self.lengths[i])
        return self.times[i, :n], self.marks[i, :n]

    @classmethod
    def from_sequences(
        cls, sequences: Sequence[tuple[Tensor, Tensor]], end: Sequence[float] | None = None
    ) -> EventBatch:
        """Pad (times [n_i], marks [n_i]) pairs into one batch."""
        if not sequences:
            raise ValueError("no sequences")
        lengths = torch.tensor([len(t) for t, _ in sequences], dtype=torch.int64)
        n = max(1, int(lengths.max()))
        times = torch.zeros(len(sequences), n, dtype=torch.float64)
        marks = torch.zeros(len(sequences), n, dtype=torch.int64)
        for i, (t, k) in enumerate(sequences):
            times[i, : len(t)] = torch.as_tensor(t, dtype=torch.float64)
            marks[i, : len(k)] = torch.as_tensor(k, dtype=torch.int64)
        end_t = None if end is None else torch.as_tensor(end, dtype=torch.float64)
        return cls(times, marks, lengths, end_t)
