"""Evaluate a checkpoint beside the exact-GP oracle; prints LL +- standard error and writes JSON.

    python -m model.evaluate --checkpoint C --kernel rbf            # paper protocol, 3000 x 16 tasks
    python -m model.evaluate --checkpoint C --context-sizes 10,50,100,200,500,1000   # streaming curve
    python -m model.evaluate --checkpoint C --kernel rbf --joint   # joint LL (a CMANP-AND), oracle joint too
    python -m model.evaluate_joint --checkpoint C --kernel rbf   # a CMANP-AND: many blocks, sample paths
    python -m model.evaluate --checkpoint C --kernel broad --context-sizes 10,50,200,1000   # the broad prior
    python -m model.evaluate --checkpoint runs/cmhp/best.safetensors   # an event model: model.evaluate_events
    python -m model.evaluate --checkpoint C --data mnist   # image completion beside a fitted GP (model.evaluate_images)

For the broad prior the oracle is the exact GP with each task's true kernel and noise. It is the
Bayes-optimal predictor only for the tasks with Gaussian noise of one variance (not Student-t, not
heteroscedastic), so the figures are reported for those tasks too ("gaussian_noise").

The model is scored through its public streaming API (condition in chunks, then predict), the
same path the service uses. LL is the target log-likelihood averaged over a task's targets, then
over tasks; the standard error is over tasks. With ``--joint`` it is the joint log-likelihood of
all of a task's targets divided by their number (autoregressive blocks of b_Q for the model, a
multivariate normal for the exact-GP oracle).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from model import evaluate_events
from model.card import read_card, write_card
from model.checkpoint import ARCHITECTURES, read_metadata
from model.data import TaskBatch
from model.data.eval_sets import DEFAULT_CACHE, broad_streaming_set, protocol_set, streaming_set
from model.data.gp import KERNELS
from model.evaluate_images import CONTEXT_SIZES, card_entries, evaluate_images
from model.evaluation_cli import parse_evaluation_args
from model.gp_oracle import gp_joint_log_likelihood, gp_log_likelihood
from model.neural_process import NeuralProcess
from model.scores import summarise
from model.tiled import load_served


@torch.no_grad()
def model_log_likelihood(
    net: NeuralProcess, batch: TaskBatch, chunk_size: int = 1024, joint: bool = False
) -> torch.Tensor:
    """Per-task mean target LL [B] via condition + predict (``joint``: + joint_log_prob, per target)."""
    state = net.condition(batch.xc, batch.yc, chunk_size=chunk_size)
    if joint:
        return (net.joint_log_prob(state, batch.xt, batch.yt) / batch.xt.shape[1]).float().cpu()
    mean, var = net.predict(state, batch.xt)
    ll = -0.5 * (math.log(2 * math.pi) + var.log() + (batch.yt.to(mean) - mean).square() / var)
    return ll.sum(-1).mean(-1).cpu()


def session_kind(checkpoint: Path) -> str:
    """The kind of data a checkpoint's model reads ("regression", "events"), from its metadata."""
    return ARCHITECTURES[read_metadata(checkpoint)["architecture"]][0].session_kind


def score(net: NeuralProcess, batches: list[TaskBatch], desc: str, joint: bool = False) -> dict[str, dict]:
    """Model and oracle LL per task; on the broad prior also over its Gaussian-noise tasks (where the oracle
    is the Bayes predictor), and those again by task family (``BroadBatch.families``)."""
    model_lls, oracle_lls, gaussian, families = [], [], [], []
    oracle = gp_joint_log_likelihood if joint else gp_log_likelihood
    for b in tqdm(batches, desc=desc, mininterval=5, leave=False):
        model_lls.append(model_log_likelihood(net, b.to(net.device), joint=joint))
        oracle_lls.append(oracle(b))
        exact = b.oracle_exact if hasattr(b, "oracle_exact") else torch.ones(len(model_lls[-1]), dtype=torch.bool)
        gaussian.append(exact)
        families += b.families() if hasattr(b, "families") else []
    model_ll, oracle_ll, mask = torch.cat(model_lls), torch.cat(oracle_lls), torch.cat(gaussian)
    result: dict[str, dict] = {"model": summarise(model_ll), "oracle": summarise(oracle_ll)}
    if not mask.all():
        result["gaussian_noise"] = {"model": summarise(model_ll[mask]), "oracle": summarise(oracle_ll[mask])}
    if families:
        result["gaussian_noise_by_family"] = {}
        for family in sorted(set(families)):
            rows = torch.tensor([f == family for f in families]) & mask
            if rows.any():  # the gap is paired: model minus oracle on the same tasks
                gap = model_ll[rows].double() - oracle_ll[rows].double()
                result["gaussian_noise_by_family"][family] = {
                    "model": summarise(model_ll[rows]), "oracle": summarise(oracle_ll[rows]), "gap": summarise(gap)
                }  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--checkpoint", type=Path)
    checkpoint = first.parse_known_args(argv)[0].checkpoint
    if checkpoint is not None and checkpoint.exists() and session_kind(checkpoint) == "events":
        return evaluate_events.main(argv)  # its own flags: python -m model.evaluate_events --help
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", choices=("gp", "mnist"), default="gp", help="mnist: image completion, faces too")
    p.add_argument("--kernel", choices=(*KERNELS, "broad"), default="rbf", help="broad: streaming mode only")
    p.add_argument("--context-sizes", type=str, help="comma-separated N values: run the streaming curve")
    p.add_argument("--num-batches", type=int, help="protocol: batches of --batch-size tasks (3000; mnist: 20)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-tasks", type=int, help="streaming: tasks per context size (64; mnist: images, 32)")
    p.add_argument("--gp-restarts", type=int, default=2, help="mnist: the fitted GP's extra optimizer starts")
    p.add_argument("--no-gp", action="store_true", help="mnist: score the model alone")
    p.add_argument("--num-targets", type=int, default=50, help="streaming mode: targets per task")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--joint", action="store_true", help="score the joint LL per target (needs a CMANP-AND)")
    args = parse_evaluation_args(p, argv)

    net = load_served(args.checkpoint)  # as the service serves it (tiled where its card says so)
    if args.data != "gp":
        return _images(p, args, net)
    args.num_batches, args.num_tasks = args.num_batches or 3000, args.num_tasks or 64
    if args.joint and net.joint_block_size is None:
        p.error(f"--joint needs a CMANP-AND checkpoint; {args.checkpoint} is a {net.architecture}")
    result: dict = {
        "checkpoint": str(args.checkpoint),
        "fingerprint": net.fingerprint,
        "kernel": args.kernel,
        "joint": args.joint,
    }
    t0 = time.time()
    if args.context_sizes:
        sizes = [int(s) for s in args.context_sizes.split(",")]
        result["mode"] = "streaming"
        result["curve"] = {}
        print(f"{'N':>6} {'model LL':>16} {'oracle LL':>16}")
        for n in sizes:
            if args.kernel == "broad":
                batches = broad_streaming_set(n, args.num_tasks, args.num_targets, args.batch_size)
            else:
                batches = streaming_set(
                    n, args.num_tasks, args.num_targets, args.kernel, args.batch_size, args.cache_dir
                )
            r = score(net, batches, f"N={n}", args.joint)
            result["curve"][str(n)] = r
            model_ll, oracle_ll = r["model"], r["oracle"]
            line = f"{n:>6} {model_ll['ll']:>9.3f} ± {model_ll['se']:.3f} "
            line += f"{oracle_ll['ll']:>9.3f} ± {oracle_ll['se']:.3f}"
            if "gaussian_noise" in r:
                gauss = r["gaussian_noise"]
                line += f"   Gaussian-noise tasks: {gauss['model']['ll']:.3f} vs {gauss['oracle']['ll']:.3f}"
            for family, f in r.get("gaussian_noise_by_family", {}).items():
                line += f"; {family} ({f['gap']['num_tasks']}) {f['gap']['ll']:+.3f} ± {f['gap']['se']:.3f}"
            print(line, flush=True)
    else:
        if args.kernel == "broad":
            p.error("--kernel broad needs --context-sizes (there is no paper protocol for the broad prior)")
        result["mode"] = "protocol"
        batches = protocol_set(args.kernel, args.num_batches, args.batch_size, args.cache_dir)
        result.update(score(net, batches, args.kernel, args.joint))
        print(
            f"{args.kernel}: model LL {result['model']['ll']:.4f} ± {result['model']['se']:.4f}   "
            f"oracle LL {result['oracle']['ll']:.4f} ± {result['oracle']['se']:.4f}   "
            f"({result['model']['num_tasks']} tasks)"
        )
    result["seconds"] = round(time.time() - t0, 1)
    _write(args, result)
    return result


def _images(p: argparse.ArgumentParser, args: argparse.Namespace, net: NeuralProcess) -> dict:
    """``--data mnist``: the image evaluation of ``model.evaluate_images``."""
    if net.cfg.dim_x != 2 or args.joint:
        p.error(f"--data {args.data} needs a marginal model of pixel coordinates (dim_x 2)")
    sizes = [int(s) for s in args.context_sizes.split(",")] if args.context_sizes else CONTEXT_SIZES
    result = {"checkpoint": str(args.checkpoint), "fingerprint": net.fingerprint}
    result |= evaluate_images(
        net,
        args.data,
        args.num_batches or 20,
        args.batch_size,
        args.num_tasks or 32,
        sizes,
        not args.no_gp,
        args.gp_restarts,
    )
    _write(args, result)
    return result


def _write(args: argparse.Namespace, result: dict) -> None:
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    if args.card_json:
        update_card_json(args.card_json, result)


def update_card_json(path: Path, result: dict) -> None:
    """Merge one run's headline numbers into a checkpoint's sidecar (what GET /v1/models serves)."""
    card = read_card(path, result["fingerprint"])
    if result["mode"] == "images":
        card.update(card_entries(result))
    elif result["mode"] == "protocol":
        k = _card_kernel(result)
        card[f"{k}_ll"] = round(result["model"]["ll"], 4)
        card[f"{k}_ll_se"] = round(result["model"]["se"], 4)
        card[f"{k}_oracle_ll"] = round(result["oracle"]["ll"], 4)
        card[f"{k}_num_tasks"] = result["model"]["num_tasks"]
    else:
        curve, kernel = result["curve"], _card_kernel(result)
        card[f"streaming_{kernel}_ll"] = {n: round(r["model"]["ll"], 4) for n, r in curve.items()}
        card[f"streaming_{kernel}_oracle_ll"] = {n: round(r["oracle"]["ll"], 4) for n, r in curve.items()}
    write_card(path, card)


def _card_kernel(result: dict) -> str:
    """Joint numbers are keyed "<kernel>_joint_..." beside the marginal "<kernel>_..."."""
    return result["kernel"] + ("_joint" if result.get("joint") else "")


if __name__ == "__main__":
    main()
