"""A model's identity: a fingerprint of its config and weights, shared by every model family.

States and checkpoints record the fingerprint of the model that made them, so a state is never
read by another model and a corrupted checkpoint is caught on load.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import Tensor, nn


def fingerprint_of(config: dict, state_dict: dict[str, Tensor]) -> str:
    """Stable id (hex, 128 bits) of a config and its tensors."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, t in sorted(state_dict.items()):
        t = t.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:32]


def check_owner(state: object, state_type: type, fingerprint: str, name: str = "state") -> None:
    """Raise ValueError unless ``state`` is a ``state_type`` built by the model ``fingerprint``."""
    if not isinstance(state, state_type):
        raise ValueError(f"{name} must be a {state_type.__name__}, got {type(state).__name__}")
    owner = state.fingerprint  # type: ignore[attr-defined]
    if owner != fingerprint:
        raise ValueError(f"{name} was built by model {owner}, not by this model ({fingerprint})")


class FingerprintedModel(nn.Module):
    """Base of the models on the CMAB encoder: ``cfg`` (with ``to_dict``), ``encoder``, a fingerprint.

    The fingerprint is cached in eval mode and recomputed in train mode, where an optimiser may
    change the weights; loading weights drops it and the encoder's weight-derived caches.
    """

    def __init__(self) -> None:
        super().__init__()
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """Stable id of config + weights (hex, 128 bits)."""
        if self._fingerprint is not None and not self.training:
            return self._fingerprint
        self._fingerprint = fingerprint_of(self.cfg.to_dict(), self.state_dict())
        return self._fingerprint

    def train(self, mode: bool = True) -> FingerprintedModel:
        self._fingerprint = None
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - nn.Module's signature
        self._fingerprint = None
        self.encoder.clear_cache()
        return super().load_state_dict(*args, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.encoder.input_latents.device
