"""An event session's state: the CMAB accumulators of its events plus the time they are relative to.

The accumulators are those of ``model.state`` with every score taken relative to ``last_time``,
the latest event time folded in (float64, -inf for an empty history): ``log_norm`` holds
``log sum_j exp(q . key_j - w (last_time - t_j))`` per block, head and latent. They stay O(1) in
magnitude however long a stream runs, so float32 loses nothing to absolute times; moving the
reference is ``log_norm -= w * dt`` (``model.cmhp``). A model with a spectrum
(``model.event_spectrum``) also keeps its damped Fourier sums ``[B, 3, F]``, relative to the same time.

Binary format, version 2 (little-endian), produced by ``to_bytes`` for a state with a spectrum; a
state without one is written in version 1 (no width and no sums), as before spectra existed, so
its blobs stay readable by older builds:

    magic       8s   b"CMHPST\\0\\0"
    format      u16  2
    batch       u32  B
    width       u32  F (0: no spectrum)
    last_time   f64[B]
    spectrum    f32[B * 3 * F]
    accumulators     a CMANPState blob (``model.state``: its own header, fingerprint and crc)
    crc32       u32  over everything above
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from model.state import CMANPState

MAGIC = b"CMHPST\0\0"
FORMAT_VERSION = 2
_HEADER = struct.Struct("<8sHI")
_WIDTH = struct.Struct("<I")  # format 2 and later
_CRC = struct.Struct("<I")


@dataclass(eq=False)
class CMHPState:
    """Accumulators of a batch of event histories; immutable by convention (updates return new states)."""

    acc: CMANPState  # scores relative to last_time
    last_time: Tensor  # [B] float64: the latest event time; -inf where no event was folded in
    spectrum: Tensor | None = None  # [B, 3, F] float32 (model.event_spectrum), relative to last_time

    @property
    def batch_size(self) -> int:
        return self.acc.batch_size

    @property
    def num_events(self) -> Tensor:
        """[B] int64."""
        return self.acc.num_points

    @property
    def fingerprint(self) -> str:
        return self.acc.fingerprint

    @staticmethod
    def concat(states: list[CMHPState]) -> CMHPState:
        """One batch of the states' histories, in order (a single state is returned as it is)."""
        if len(states) == 1:
            return states[0]
        spectrum = None if states[0].spectrum is None else torch.cat([s.spectrum for s in states])
        return CMHPState(CMANPState.concat([s.acc for s in states]), torch.cat([s.last_time for s in states]), spectrum)

    def tile(self, copies: int) -> CMHPState:
        """``copies`` independent copies of the batch, copy-major ([copies * B]); self is untouched."""
        spectrum = None if self.spectrum is None else self.spectrum.repeat(copies, 1, 1)
        return CMHPState(self.acc.tile(copies), self.last_time.repeat(copies), spectrum)

    def where(self, keep: Tensor, other: CMHPState) -> CMHPState:
        """Per batch element: this state where ``keep`` [B] is True, else ``other``'s."""
        acc = CMANPState(
            torch.where(keep.view(-1, 1, 1, 1), self.acc.log_norm, other.acc.log_norm),
            torch.where(keep.view(-1, 1, 1, 1, 1), self.acc.value_sum, other.acc.value_sum),
            torch.where(keep, self.acc.num_points, other.acc.num_points),
            self.fingerprint,
            max(self.acc.version, other.acc.version),
        )
        spectrum = None if self.spectrum is None else torch.where(keep.view(-1, 1, 1), self.spectrum, other.spectrum)
        return CMHPState(acc, torch.where(keep, self.last_time, other.last_time), spectrum)

    # ---- binary format ----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        last = self.last_time.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()
        spectrum = b"" if self.spectrum is None else self.spectrum.detach().to("cpu", torch.float32).numpy().tobytes()
        if self.spectrum is None:
            head = _HEADER.pack(MAGIC, 1, self.batch_size)
        else:
            head = _HEADER.pack(MAGIC, FORMAT_VERSION, self.batch_size) + _WIDTH.pack(self.spectrum.shape[-1])
        payload = head + last + spectrum + self.acc.to_bytes()
        return payload + _CRC.pack(zlib.crc32(payload))

    @classmethod
    def from_bytes(
        cls,
        blob: bytes,
        fingerprint: str,
        dims: tuple[int, int, int, int],
        device: torch.device | str = "cpu",
        spectrum_width: int = 0,
    ) -> CMHPState:
        """Parse a blob, checking format, checksum, model (its accumulator dims and spectrum width F)
        and values; raises ValueError."""
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise ValueError(f"state must be bytes, got {type(blob).__name__}")
        blob = bytes(blob)
        if len(blob) < _HEADER.size + _CRC.size:
            raise ValueError(f"event state blob truncated: {len(blob)} bytes is shorter than the header")
        magic, fmt, B = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise ValueError("not an event-model state blob (bad magic)")
        if fmt not in (1, FORMAT_VERSION):
            raise ValueError(f"unsupported event state format version {fmt} (this build reads 1 and {FORMAT_VERSION})")
        (crc,) = _CRC.unpack_from(blob, len(blob) - _CRC.size)
        if zlib.crc32(blob[: -_CRC.size]) != crc:
            raise ValueError("event state blob corrupted: checksum mismatch")
        offset, width = _HEADER.size, 0
        if fmt == 2:
            if len(blob) < offset + _WIDTH.size + _CRC.size:
                raise ValueError("event state blob truncated")
            (width,) = _WIDTH.unpack_from(blob, offset)
            offset += _WIDTH.size
        if width != spectrum_width:
            raise ValueError(f"event state holds {width} spectral sums per stream, this model keeps {spectrum_width}")
        start = offset + 8 * B + 4 * B * 3 * width
        if len(blob) < start + _CRC.size:
            raise ValueError("event state blob truncated")
        last = np.frombuffer(blob, dtype="<f8", count=B, offset=offset)
        spectrum = None
        if width:
            values = np.frombuffer(blob, dtype="<f4", count=B * 3 * width, offset=offset + 8 * B).reshape(B, 3, width)
            if not (np.isfinite(values).all() and (values[:, 2] >= 0).all()):
                raise ValueError("event state's spectral sums are not finite, or a diagonal sum is negative")
            spectrum = torch.from_numpy(values.copy()).to(device)
        acc = CMANPState.from_bytes(blob[start : -_CRC.size], fingerprint, dims, device)
        if acc.batch_size != B:
            raise ValueError(f"event state says batch {B}, its accumulators hold {acc.batch_size}")
        empty = acc.num_points.cpu().numpy() == 0
        if not (np.all(last[empty] == -math.inf) and np.isfinite(last[~empty]).all()):
            raise ValueError("event state's last event times do not match its event counts")
        if spectrum is not None and spectrum[torch.from_numpy(empty)].any():
            raise ValueError("event state's spectral sums are not zero for a stream without events")
        return cls(acc, torch.from_numpy(last.copy()).to(device), spectrum)
