"""CMANP: Constant Memory Attentive Neural Processes (and the CMHP event model) with exact streaming states."""

from model.checkpoint import load_checkpoint, save_checkpoint
from model.cmanp import CMANP, CMANPConfig
from model.cmanp_and import CMANPAND, CMANPANDConfig
from model.cmhp import CMHP, CMHPConfig
from model.event_state import CMHPState
from model.neural_process import NeuralProcess
from model.state import CMANPState

__all__ = [
    "CMANP",
    "CMANPAND",
    "CMANPANDConfig",
    "CMANPConfig",
    "CMANPState",
    "CMHP",
    "CMHPConfig",
    "CMHPState",
    "NeuralProcess",
    "load_checkpoint",
    "save_checkpoint",
]
