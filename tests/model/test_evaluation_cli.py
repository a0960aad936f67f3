"""The options every evaluation shares: added, parsed, and --threads applied to torch."""

import argparse
from pathlib import Path

import torch

from model.evaluation_cli import parse_evaluation_args


def test_shared_options_are_parsed_and_threads_applied():
    before = torch.get_num_threads()
    try:
        p = argparse.ArgumentParser()
        p.add_argument("--own", type=int)
        args = parse_evaluation_args(p, ["--own", "3", "--threads", "2", "--out", "r.json", "--card-json", "c.json"])
        assert (args.own, args.threads, args.out, args.card_json) == (3, 2, Path("r.json"), Path("c.json"))
        assert torch.get_num_threads() == 2
        defaults = parse_evaluation_args(argparse.ArgumentParser(), [])
        assert (defaults.threads, defaults.out, defaults.card_json) == (0, None, None)
        assert torch.get_num_threads() == 2  # 0 leaves torch's setting alone
    finally:
        torch.set_num_threads(before)
