"""A session's state: log-sum-exp accumulators per block, head and latent, and their binary format.

For fixed queries, softmax cross-attention over a set of points is summarised exactly by
``c = logsumexp_j s_j`` (log normaliser) and ``o = sum_j exp(s_j - c) v_j`` (normalised value sum).
Two summaries of disjoint sets merge exactly (``merge_accumulators``); the empty set is
``c = -inf, o = 0``, the identity. The state never holds the points, so its size is constant.

Binary format, version 1 (little-endian), produced by ``to_bytes``:

    magic       8s   b"CMANPST\\0"
    format      u16  1
    dtype       u8   1 = float32
    reserved    u8   0
    fingerprint 16s  the model's fingerprint (raw bytes of its 32 hex chars)
    batch       u32  B
    blocks      u16  K
    heads       u16  H
    latents     u32  L
    head_dim    u32  Dh
    version     u64  number of update batches folded in
    num_points  i64[B]
    log_norm    f32[B*K*H*L]
    value_sum   f32[B*K*H*L*Dh]
    crc32       u32  over everything above

No pickle: every field has a fixed type, and a blob is validated before any tensor is built.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

MAGIC = b"CMANPST\0"
FORMAT_VERSION = 1
DTYPE_FLOAT32 = 1
_HEADER = struct.Struct("<8sHBB16sIHHIIQ")
_CRC = struct.Struct("<I")


def merge_accumulators(c_a: Tensor, o_a: Tensor, c_b: Tensor, o_b: Tensor) -> tuple[Tensor, Tensor]:
    """Exact merge of two (log normaliser, normalised value sum) pairs; -inf/0 is the identity."""
    c = torch.logaddexp(c_a, c_b)
    # Where both sides are empty c is -inf; a reference of 0 keeps exp(-inf - ref) = 0, not NaN.
    ref = torch.where(torch.isneginf(c), torch.zeros_like(c), c)
    o = torch.exp(c_a - ref).unsqueeze(-1) * o_a + torch.exp(c_b - ref).unsqueeze(-1) * o_b
    return c, o


def add_point(c: Tensor, o: Tensor, score: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    """``merge_accumulators`` with a single point (c = score, o = value): the same result in fewer
    passes, for the one-point update. A score is finite, so the merged c is too and needs no
    empty-set guard; o' = o + exp(score - c') (value - o) is the convex mix of the two sides."""
    c_new = torch.logaddexp(c, score)
    return c_new, torch.lerp(o, value, torch.exp(score - c_new).unsqueeze(-1))


@dataclass(eq=False)
class CMANPState:
    """Accumulators of a batch of sessions; immutable by convention (updates return new states)."""

    log_norm: Tensor  # [B, K, H, L]
    value_sum: Tensor  # [B, K, H, L, Dh]
    num_points: Tensor  # [B] int64
    fingerprint: str  # the model that built it
    version: int = 0  # number of update batches folded in
    # (fingerprint, derived latents), see keep_derived; never serialised.
    _derived: tuple[str, Tensor] | None = field(default=None, repr=False)

    @property
    def batch_size(self) -> int:
        return self.log_norm.shape[0]

    @property
    def dims(self) -> tuple[int, int, int, int]:
        """(blocks, heads, latents, head_dim)."""
        return (*self.log_norm.shape[1:], self.value_sum.shape[-1])  # type: ignore[return-value]

    def derived(self, fingerprint: str) -> Tensor | None:
        """The latents that model ``fingerprint`` derived from this state and kept, if any."""
        if self._derived is not None and self._derived[0] == fingerprint:
            return self._derived[1]
        return None

    @property
    def derived_entry(self) -> tuple[str, Tensor] | None:
        """(owner key, latents) kept by ``keep_derived``, if any."""
        return self._derived

    def keep_derived(self, fingerprint: str, latents: Tensor) -> None:
        """Cache latents derived by model ``fingerprint``: the state is immutable, so they stay valid,
        and a repeated predict on an unchanged session only decodes."""
        self._derived = (fingerprint, latents)

    def merge(self, other: CMANPState) -> CMANPState:
        if other.fingerprint != self.fingerprint:
            raise ValueError(f"cannot merge states of different models ({self.fingerprint} vs {other.fingerprint})")
        if other.batch_size != self.batch_size:
            raise ValueError(f"cannot merge states of batch sizes {self.batch_size} and {other.batch_size}")
        c, o = merge_accumulators(self.log_norm, self.value_sum, other.log_norm, other.value_sum)
        return CMANPState(c, o, self.num_points + other.num_points, self.fingerprint, self.version + other.version)

    @staticmethod
    def concat(states: list[CMANPState]) -> CMANPState:
        """One batch of the states' sessions, in order (a single state is returned as it is)."""
        if len(states) == 1:
            return states[0]
        if len({s.fingerprint for s in states}) != 1:
            raise ValueError("cannot batch states of different models")
        batch = CMANPState(
            torch.cat([s.log_norm for s in states]),
            torch.cat([s.value_sum for s in states]),
            torch.cat([s.num_points for s in states]),
            states[0].fingerprint,
        )
        # Latents the states' model already derived stay valid in the batch (derived latents are
        # batch-major on dim 1 for every model), so a batched predict over hot sessions only decodes.
        cached = [s.derived_entry for s in states]
        if all(c is not None and c[0] == cached[0][0] for c in cached):  # type: ignore[index]
            batch.keep_derived(cached[0][0], torch.cat([c[1] for c in cached], dim=1))  # type: ignore[index]
        return batch

    def tile(self, copies: int) -> CMANPState:
        """``copies`` independent copies of the batch, copy-major ([copies * B]); self is untouched."""
        return CMANPState(
            self.log_norm.repeat(copies, 1, 1, 1),
            self.value_sum.repeat(copies, 1, 1, 1, 1),
            self.num_points.repeat(copies),
            self.fingerprint,
            self.version,
        )

    # ---- binary format ----------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        B = self.batch_size
        K, H, L, Dh = self.dims
        header = _HEADER.pack(
            MAGIC, FORMAT_VERSION, DTYPE_FLOAT32, 0, bytes.fromhex(self.fingerprint), B, K, H, L, Dh, self.version
        )
        body = b"".join(
            t.detach().to("cpu").contiguous().numpy().tobytes()
            for t in (
                self.num_points.to(torch.int64),
                self.log_norm.to(torch.float32),
                self.value_sum.to(torch.float32),
            )
        )
        payload = header + body
        return payload + _CRC.pack(zlib.crc32(payload))

    @classmethod
    def from_bytes(
        cls,
        blob: bytes,
        fingerprint: str,
        dims: tuple[int, int, int, int],
        device: torch.device | str = "cpu",
    ) -> CMANPState:
        """Parse a blob, checking format, checksum, model and values; raises ValueError."""
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise ValueError(f"state must be bytes, got {type(blob).__name__}")
        blob = bytes(blob)
        if len(blob) < _HEADER.size + _CRC.size:
            raise ValueError(f"state blob truncated: {len(blob)} bytes is shorter than the header")
        magic, fmt, dtype, _, fp, B, K, H, L, Dh, version = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise ValueError("not a CMANP state blob (bad magic)")
        if fmt != FORMAT_VERSION:
            raise ValueError(f"unsupported state format version {fmt} (this build reads {FORMAT_VERSION})")
        if dtype != DTYPE_FLOAT32:
            raise ValueError(f"unsupported state dtype code {dtype}")
        n_norm = B * K * H * L
        expected = _HEADER.size + 8 * B + 4 * n_norm * (1 + Dh) + _CRC.size
        if len(blob) != expected:
            raise ValueError(f"state blob truncated or corrupted: header implies {expected} bytes, got {len(blob)}")
        (crc,) = _CRC.unpack_from(blob, len(blob) - _CRC.size)
        if zlib.crc32(blob[: -_CRC.size]) != crc:
            raise ValueError("state blob corrupted: checksum mismatch")
        if fp.hex() != fingerprint:
            raise ValueError(f"state belongs to model {fp.hex()}, not to this model ({fingerprint})")
        if (K, H, L, Dh) != tuple(dims):
            raise ValueError(f"state has dims {(K, H, L, Dh)}, the model has {tuple(dims)}")
        if B < 1:
            raise ValueError("state has batch size 0")

        offset = _HEADER.size
        num_points = np.frombuffer(blob, dtype="<i8", count=B, offset=offset)
        offset += 8 * B
        log_norm = np.frombuffer(blob, dtype="<f4", count=n_norm, offset=offset).reshape(B, K, H, L)
        offset += 4 * n_norm
        value_sum = np.frombuffer(blob, dtype="<f4", count=n_norm * Dh, offset=offset).reshape(B, K, H, L, Dh)
        _check_values(num_points, log_norm, value_sum)

        def tensor(a: np.ndarray) -> Tensor:
            return torch.from_numpy(a.copy()).to(device)

        return cls(tensor(log_norm), tensor(value_sum), tensor(num_points), fingerprint, int(version))


def _check_values(num_points: np.ndarray, log_norm: np.ndarray, value_sum: np.ndarray) -> None:
    """An empty element is exactly (-inf, 0); a non-empty one is all finite."""
    if (num_points < 0).any():
        raise ValueError("state has a negative point count")
    if not np.isfinite(value_sum).all():
        raise ValueError("state has non-finite value sums")
    empty = num_points == 0
    if not np.isfinite(log_norm[~empty]).all():
        raise ValueError("state has non-finite log normalisers for a non-empty context")
    if empty.any() and not (np.all(log_norm[empty] == -math.inf) and np.all(value_sum[empty] == 0)):
        raise ValueError("state claims an empty context but has accumulated values")
