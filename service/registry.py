"""The served models: every ``*.safetensors`` in the checkpoint directory, named by file stem.

Models of every kind are served side by side: regression models (``NeuralProcess``) and event
models (``CMHP``); each declares the kind of session it serves (``session_kind``). A model card
sidecar ``<stem>.json`` (headline eval numbers) is served as the model's metrics when present;
its ``tiling`` section serves a 1-D model on a pyramid of zoomed tiles (``model.tiled``);
for a regression model its ``y_range``, the training output range, feeds the range guard
(``service.training_range``). Sessions pin a model's name and fingerprint; ``pinned`` refuses a session whose
model is gone or was replaced by different weights, so a session never gets silently wrong
predictions from a model that did not build its state.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model import NeuralProcess
from model.checkpoint import Model
from model.tiled import TiledNP, load_served
from service.errors import ConflictError, NotFoundError
from service.training_range import TrainingRange

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    name: str
    net: Model | TiledNP
    metrics: dict[str, Any] | None
    empty_state: bytes  # the state blob of a new session
    # The inputs and outputs a regression model was trained on; None for a model whose data are not
    # points (x, y), such as an event model.
    training_range: TrainingRange | None
    # The card's "y_transform_default": "auto" for a model trained on standardised data (sessions that
    # give no y_transform are scaled from their own points); None: the identity, as for the paper model.
    y_transform_default: str | None = None
    path: Path | None = None  # the checkpoint it was loaded from (the fold process loads it again)

    @property
    def fingerprint(self) -> str:
        return self.net.fingerprint

    @property
    def session_kind(self) -> str:
        """The kind of session the model serves (``service.kinds``)."""
        return self.net.session_kind

    @property
    def dim_x(self) -> int:  # regression models only, as dim_y and training_range
        return self.net.cfg.dim_x

    @property
    def dim_y(self) -> int:
        return self.net.cfg.dim_y

    @property
    def joint_block_size(self) -> int | None:
        """b_Q of a model with a joint head (covariances and joint samples); None for a plain CMANP."""
        return self.net.joint_block_size

    @classmethod
    def load(cls, path: Path) -> ServedModel:
        net = load_served(path)
        card = path.with_suffix(".json")
        metrics = json.loads(card.read_text()) if card.is_file() else None
        y_range = (metrics or {}).pop("y_range", None)
        y_default = (metrics or {}).pop("y_transform_default", None)
        training_range = None
        if isinstance(net, NeuralProcess | TiledNP):
            training_range = TrainingRange(net.cfg.x_range, tuple(y_range) if y_range else None)
        empty = net.empty_state(batch_size=1).to_bytes()
        return cls(path.stem, net, metrics, empty, training_range, y_default, path)


class ModelRegistry:
    def __init__(self, models: dict[str, ServedModel], default: str) -> None:
        self.models = models
        self.default = default

    @classmethod
    def load(cls, directory: Path, default: str) -> ModelRegistry:
        models = {}
        for path in sorted(directory.glob("*.safetensors")):
            models[path.stem] = ServedModel.load(path)
            logger.info("loaded model %s (%s) from %s", path.stem, models[path.stem].fingerprint, path)
        if default not in models:
            logger.warning("default model %r is not in %s; the service stays unready", default, directory)
        return cls(models, default)

    @property
    def ready(self) -> bool:
        return self.default in self.models

    def get(self, name: str | None) -> ServedModel:
        name = name or self.default
        if name not in self.models:
            raise NotFoundError(f"model {name!r} is not served; GET /v1/models lists the served models")
        return self.models[name]

    def serving(self, name: str, fingerprint: str) -> ServedModel | None:
        """The model a session was created with, or None if it is gone or was replaced."""
        served = self.models.get(name)
        return served if served is not None and served.fingerprint == fingerprint else None

    def pinned(self, name: str, fingerprint: str) -> ServedModel:
        """The model a session was created with, if it is still served with the same weights (else 409)."""
        served = self.serving(name, fingerprint)
        if served is not None:
            return served
        if name not in self.models:
            raise ConflictError(f"this session's model {name!r} is no longer served; create a new session")
        raise ConflictError(
            f"this session's model {name!r} was replaced (its state was built by fingerprint {fingerprint}, "
            f"the served weights are {self.models[name].fingerprint}); create a new session"
        )
