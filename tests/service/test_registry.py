"""The served models: loaded from a checkpoint directory, looked up by name, pinned by fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import ConflictError, NotFoundError
from service.registry import ModelRegistry
from tests.service.helpers import TINY, TINY_AND, build_checkpoint


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("registry")
    card = {"rbf_ll": 1.0, "y_range": [-3.0, 3.0], "y_transform_default": "auto"}
    build_checkpoint(directory, "carded", TINY, seed=0, card=card)
    build_checkpoint(directory, "joint", TINY_AND, seed=1)
    return directory


def test_every_checkpoint_is_served_under_its_file_name(models: Path) -> None:
    registry = ModelRegistry.load(models, default="carded")
    assert sorted(registry.models) == ["carded", "joint"] and registry.ready
    assert registry.get(None) is registry.get("carded")


def test_the_model_card_gives_metrics_the_training_range_and_the_y_default(models: Path) -> None:
    carded = ModelRegistry.load(models, default="carded").get("carded")
    assert carded.metrics == {"rbf_ll": 1.0}  # the range and the default are not metrics
    assert carded.training_range.y == (-3.0, 3.0) and carded.training_range.x == carded.net.cfg.x_range
    assert carded.y_transform_default == "auto"
    joint = ModelRegistry.load(models, default="carded").get("joint")
    assert (joint.metrics, joint.training_range.y, joint.y_transform_default) == (None, None, None)


def test_a_served_model_says_what_it_can_do(models: Path) -> None:
    registry = ModelRegistry.load(models, default="carded")
    carded, joint = registry.get("carded"), registry.get("joint")
    assert carded.net.session_kind == joint.net.session_kind == "regression"
    assert (carded.joint_block_size, joint.joint_block_size) == (None, TINY_AND.block_size)
    assert carded.empty_state == carded.net.empty_state().to_bytes()
    assert (carded.dim_x, carded.dim_y) == (TINY.dim_x, TINY.dim_y)


def test_without_its_default_model_the_registry_is_not_ready(models: Path) -> None:
    assert not ModelRegistry.load(models, default="missing").ready


def test_an_unknown_model_is_not_found(models: Path) -> None:
    with pytest.raises(NotFoundError, match="'nope' is not served"):
        ModelRegistry.load(models, default="carded").get("nope")


def test_a_session_is_served_only_by_the_weights_that_built_its_state(models: Path) -> None:
    registry = ModelRegistry.load(models, default="carded")
    carded = registry.get("carded")
    assert registry.serving("carded", carded.fingerprint) is carded
    assert registry.pinned("carded", carded.fingerprint) is carded
    assert registry.serving("carded", "0" * 32) is None
    with pytest.raises(ConflictError, match="was replaced"):
        registry.pinned("carded", "0" * 32)
    with pytest.raises(ConflictError, match="no longer served"):
        registry.pinned("gone", carded.fingerprint)
