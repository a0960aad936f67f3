"""What a model can do is declared by the model (callers never test its class), and the joint
model is composed from the marginal model's parts: same tensors, same marginal predictions."""

import pytest
import torch

from model import CMANP, CMANPAND, CMHP, CMHPConfig, NeuralProcess
from tests.model.conftest import SMALL, SMALL_AND, random_points, small_model


def test_a_marginal_model_declares_no_joint_head_and_no_sampling():
    net = small_model()
    assert (net.session_kind, net.joint_block_size, net.can_sample) == ("regression", None, False)


def test_a_joint_model_declares_its_block_size_and_sampling():
    net = small_model(cfg=SMALL_AND)
    assert (net.session_kind, net.joint_block_size, net.can_sample) == ("regression", SMALL_AND.block_size, True)


def test_the_event_model_declares_an_event_session_and_sampling():
    net = CMHP(CMHPConfig(d_model=16, n_heads=2, n_blocks=1, n_latents=4, ff_width=16, components=2))
    assert (net.session_kind, net.joint_block_size, net.can_sample) == ("events", None, True)


def test_the_joint_model_is_a_composition_not_a_marginal_model():
    assert not issubclass(CMANPAND, CMANP) and issubclass(CMANPAND, NeuralProcess)


def test_the_joint_model_has_the_marginal_models_tensors_plus_its_joint_head():
    plain, joint = small_model(seed=3), small_model(seed=3, cfg=SMALL_AND)
    names = [n for n in joint.state_dict() if not n.startswith("joint_head.")]
    assert names == list(plain.state_dict())


def test_the_joint_model_predicts_the_marginals_of_the_same_weights():
    plain, joint = small_model(seed=3), small_model(seed=3, cfg=SMALL_AND)
    joint.load_state_dict(plain.state_dict(), strict=False)
    x, y = random_points(9, SMALL, seed=4)
    xq = torch.linspace(-2, 2, 5).view(1, -1, 1)
    with torch.no_grad():
        a = plain.predict(plain.condition(x, y), xq)
        b = joint.predict(joint.condition(x, y), xq)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_the_joint_mean_can_start_from_the_marginal_mean():
    joint = small_model(seed=5, cfg=SMALL_AND)
    joint.init_joint_mean_from_base()
    z = torch.randn(2, 3, SMALL.d_model)
    with torch.no_grad():
        torch.testing.assert_close(joint.joint_head.mean(z), joint.head(z)[0], rtol=0, atol=1e-6)


def test_a_state_dict_with_module_names_loads_too():
    """The model loads its state dict in the checkpoints' names and in its module tree's names."""
    net, other = small_model(seed=1), small_model(seed=2)
    nested = {n: p.detach().clone() for n, p in net.named_parameters()}
    assert "encoder.data_attn.latents" in nested
    other.load_state_dict(nested)
    assert other.fingerprint == net.fingerprint


def test_a_part_named_like_an_encoder_part_is_refused():
    """A family that registered its own "data_attn" would write two tensors under one name."""
    net = small_model()
    net.data_attn = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="data_attn.weight"):
        net.state_dict()
