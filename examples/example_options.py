"""What the examples share: the options that say which service, key and model to use, and where to write.

PNGs go to examples/out/ unless --out says otherwise: that folder is git-ignored, so running an
example leaves the checkout clean.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "out"
DEFAULT_MODEL_HELP = "default: the service's default model"


def service_parser(doc: str, out: str, model_help: str = DEFAULT_MODEL_HELP) -> argparse.ArgumentParser:
    """A parser with --url (env CMANP_URL), --api-key (env CMANP_API_KEY), --model and --out (a Path)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("CMANP_URL", "http://127.0.0.1:8000"), help="env CMANP_URL")
    parser.add_argument("--api-key", default=os.environ.get("CMANP_API_KEY"), help="env CMANP_API_KEY")
    parser.add_argument("--model", default=None, help=model_help)
    parser.add_argument("--out", type=Path, default=OUT_DIR / out, help="the PNG to write (default: %(default)s)")
    return parser


def prepared(path: Path) -> Path:
    """``path``, with its folder created: the default folder does not exist in a fresh checkout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
