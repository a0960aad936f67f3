"""The v1 tensor layout: how a NeuralProcess names and orders its tensors, as checkpoints have since v1.

The first model was one module that held the CMAB encoder's parts (``data_attn``, ``latent_stack``,
``input_latents``, ``readouts``) as its own attributes. They now sit in ``encoder``; two things of
the old layout stay, so that every checkpoint and training state written before loads unchanged:

* names: the encoder's tensors are named at the top level ("data_attn.latents", not
  "encoder.data_attn.latents") in state dicts, hence in checkpoints and in fingerprints, which
  hash the names;
* order: the encoder's own parameters (``input_latents``, the one tensor the old model held
  itself) come first, in state dicts and in ``parameters()``. An optimiser's saved moments are
  positional, so a training state (``last.pt``) saved before the split resumes with each moment
  on its own parameter.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

from torch import nn

ENCODER = "encoder"
T = TypeVar("T")


def encoder_names(net: nn.Module) -> set[str]:
    """The first components of the encoder's tensor names: "data_attn", "input_latents", ..."""
    encoder = net.get_submodule(ENCODER)
    children = {name for name, _ in encoder.named_children()}
    return children | {name for name, _ in encoder.named_parameters(recurse=False)}


def keep_v1_layout(net: nn.Module) -> None:
    """Make ``net``'s state dicts use the v1 names and order (its ``named_parameters`` calls ``v1_order``)."""
    net.register_state_dict_post_hook(_flatten_names)
    net.register_load_state_dict_pre_hook(_nest_names)


def v1_order(net: nn.Module, named: Iterator[tuple[str, T]], prefix: str = "") -> Iterator[tuple[str, T]]:
    """(name, tensor) pairs of ``net`` with the encoder's own parameters moved to the front."""
    own = {f"{prefix}{ENCODER}.{name}" for name, _ in net.get_submodule(ENCODER).named_parameters(recurse=False)}
    items = list(named)
    return iter([item for item in items if item[0] in own] + [item for item in items if item[0] not in own])


def _flatten_names(net: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: v1 names and order, in place ("encoder.data_attn.latents" -> "data_attn.latents")."""
    items = list(state_dict.items())
    start = next((i for i, (key, _) in enumerate(items) if key.startswith(prefix)), len(items))
    nested = f"{prefix}{ENCODER}."
    names = encoder_names(net)
    for key, _ in items[start:]:
        if not key.startswith(nested) and key[len(prefix) :].split(".", 1)[0] in names:
            raise ValueError(f"{key!r} is named like a part of the encoder, whose tensors sit at the top level")
    state_dict.clear()
    state_dict.update(items[:start])  # tensors of modules before this one, when it is a submodule
    for key, value in v1_order(net, iter(items[start:]), prefix):
        state_dict[prefix + key[len(nested) :] if key.startswith(nested) else key] = value


def _nest_names(net: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """load_state_dict pre-hook: the module names of v1 names, in place ("data_attn.x" -> "encoder.data_attn.x")."""
    names = encoder_names(net)
    for key in [k for k in state_dict if k.startswith(prefix)]:
        if key[len(prefix) :].split(".", 1)[0] in names:
            state_dict[f"{prefix}{ENCODER}.{key[len(prefix) :]}"] = state_dict.pop(key)
