"""The command-line options every evaluation shares, and what they do on parsing.

``--threads`` (torch's intra-op threads; 0 keeps torch's default), ``--out`` (the results as JSON)
and ``--card-json`` (the model-card sidecar the headline numbers merge into), so each evaluation
module (``model.evaluate``, ``model.evaluate_events``, ``model.evaluate_joint``) only adds its own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def parse_evaluation_args(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Add the shared options to ``p``, parse ``argv`` and apply ``--threads``."""
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--card-json", type=Path, help="merge the headline numbers into this model-card sidecar")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
