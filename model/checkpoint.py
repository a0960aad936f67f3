"""Checkpoints: safetensors weights plus JSON metadata (architecture, config, fingerprint, training record).

safetensors stores raw tensors and a JSON header, so loading runs no pickle and no code.
The fingerprint recorded at save time is recomputed on load; a mismatch means corruption.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.cmanp import CMANP, CMANPConfig
from model.cmanp_and import CMANPAND, CMANPANDConfig
from model.cmhp import CMHP, CMHPConfig
from model.neural_process import NeuralProcess

# Every family's model class: the regression NeuralProcesses and the event model.
Model = NeuralProcess | CMHP

FORMAT = "cmanp-checkpoint"
FORMAT_VERSION = "1"
# The model class and config class of each architecture. Checkpoints written before the
# "architecture" field existed are plain CMANPs.
ARCHITECTURES: dict[str, tuple[type[Model], type[CMANPConfig | CMHPConfig]]] = {
    CMANP.architecture: (CMANP, CMANPConfig),
    CMANPAND.architecture: (CMANPAND, CMANPANDConfig),
    CMHP.architecture: (CMHP, CMHPConfig),
}


def build_model(cfg: CMANPConfig | CMHPConfig) -> Model:
    """A freshly initialised model of the architecture that ``cfg``'s class configures."""
    for net_cls, cfg_cls in ARCHITECTURES.values():
        if type(cfg) is cfg_cls:
            return net_cls(cfg)
    raise ValueError(f"no architecture is configured by {type(cfg).__name__}")


def save_checkpoint(net: Model, path: str | os.PathLike, info: dict[str, Any] | None = None) -> str:
    """Write config + weights + fingerprint atomically; returns the fingerprint."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    fingerprint = net.fingerprint
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": net.architecture,
        "config": json.dumps(net.cfg.to_dict(), sort_keys=True),
        "fingerprint": fingerprint,
        "info": json.dumps(info or {}, sort_keys=True),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return fingerprint


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Config, fingerprint and info of a checkpoint, without building the model."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise ValueError(f"{path} is not a readable safetensors checkpoint: {e}") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a CMANP checkpoint (format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {meta.get('format_version')}, expected {FORMAT_VERSION}")
    architecture = meta.get("architecture", CMANP.architecture)
    if architecture not in ARCHITECTURES:
        raise ValueError(f"{path} has unknown architecture {architecture!r}; this build reads {sorted(ARCHITECTURES)}")
    return {
        "architecture": architecture,
        "config": json.loads(meta["config"]),
        "fingerprint": meta["fingerprint"],
        "info": json.loads(meta.get("info", "{}")),
    }


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> Model:
    """Build the model from the checkpoint's own config, load its weights and verify its fingerprint."""
    meta = read_metadata(path)
    net = build_model(ARCHITECTURES[meta["architecture"]][1].from_dict(meta["config"]))
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    net.load_state_dict(tensors, strict=True)
    net.eval()
    if net.fingerprint != meta["fingerprint"]:
        raise ValueError(f"{path}: weights do not match the recorded fingerprint (corrupted checkpoint)")
    net.info = meta["info"]
    return net.to(device)
