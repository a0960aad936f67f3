"""What the examples share: the options that say which service, key and model to use, and where to write."""

from __future__ import annotations

import argparse
import os


def service_parser(doc: str, out: str) -> argparse.ArgumentParser:
    """A parser with --url (env CMANP_URL), --api-key (env CMANP_API_KEY), --model and --out."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("CMANP_URL", "http://127.0.0.1:8000"), help="env CMANP_URL")
    parser.add_argument("--api-key", default=os.environ.get("CMANP_API_KEY"), help="env CMANP_API_KEY")
    parser.add_argument("--model", default=None, help="default: the service's default model")
    parser.add_argument("--out", default=out, help="the PNG to write")
    return parser
