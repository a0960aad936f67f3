"""CMANP: a Constant Memory Attentive Neural Process with an exact streaming state."""

from model.checkpoint import load_checkpoint, save_checkpoint
from model.cmanp import CMANP, CMANPConfig
from model.cmanp_and import CMANPAND, CMANPANDConfig
from model.neural_process import NeuralProcess
from model.state import CMANPState

__all__ = [
    "CMANP",
    "CMANPAND",
    "CMANPANDConfig",
    "CMANPConfig",
    "CMANPState",
    "NeuralProcess",
    "load_checkpoint",
    "save_checkpoint",
]
