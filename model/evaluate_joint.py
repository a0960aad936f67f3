"""Evaluate a joint model (CMANP-AND) the way users use it, beside the exact GP (issue 20).

    python -m model.evaluate_joint --checkpoint checkpoints/cmanp-and-gp-rbf.safetensors --kernel rbf

Three measurements, each beside the exact GP with the true kernel and hyperparameters:

* **Multi-block joint LL**: tasks with the protocol's contexts (N ~ U{3..46}) and ``--targets``
  targets at random inputs, more than one joint block. The model scores them through its public
  ``joint_log_prob``: blocks of b_Q targets, each block's true values folded into a copy of the
  state with the exact update before the next block is scored (the chain rule). The exact GP
  scores the same targets as one multivariate normal. Reported per target (the joint log-density
  divided by the number of targets, then averaged over tasks, ± the standard error over tasks), and
  per block (block k's conditional log-density given the context and blocks 1..k-1, per target),
  which shows whether folding earlier blocks costs accuracy.
* **Sample-path roughness**: on tasks whose targets are a sorted grid of ``--grid`` points spanning
  the x range, ``--samples`` joint paths per task; their mean squared increment between
  neighbouring grid points divided by the exact GP posterior's expected value
  (``model.sample_paths``), per task, then averaged over tasks. The paths are of noisy readings y
  (the joint covariance includes the observation noise), so the GP's expectation is that of y.
  As a control, the same ratio for the exact GP's own sample paths (1 up to Monte Carlo error).
* **Minimum-rank calibration**: on the same grid tasks and paths, the rank of the true y's
  minimum over the grid among the paths' minima, a histogram of ``--samples`` + 1 bins, and a
  chi-square test of uniformity that passes at p > 0.01; the exact GP's own paths are the control
  (calibrated by construction, so they must pass).

Every task set comes from a fixed seed (``model.data.eval_sets.joint_set``) and every path from
``--seed``, so a run is reproducible on one thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from model.card import read_card, write_card
from model.checkpoint import load_checkpoint
from model.data.eval_sets import DEFAULT_CACHE, joint_set
from model.data.gp import GPBatch
from model.evaluation_cli import parse_evaluation_args
from model.gp_oracle import gp_joint_log_likelihood, gp_posterior
from model.neural_process import NeuralProcess
from model.sample_paths import (
    expected_squared_increment,
    gaussian_paths,
    mean_squared_increment,
    min_ranks,
    uniformity_test,
)
from model.scores import summarise


def block_ends(num_targets: int, block_size: int) -> list[int]:
    """The end index of each autoregressive block of ``num_targets`` targets."""
    return [min(end, num_targets) for end in range(block_size, num_targets + block_size, block_size)]


@torch.no_grad()
def model_block_log_likelihoods(net: NeuralProcess, batch: GPBatch, chunk_size: int = 1024) -> torch.Tensor:
    """Per task and block, the model's conditional joint log-density of the block's targets (float64
    [B, blocks]): differences of ``joint_log_prob`` over growing prefixes of the targets, each of
    which folds its earlier blocks' true values into a copy of the state."""
    state = net.condition(batch.xc, batch.yc, chunk_size=chunk_size)
    prefixes = [
        net.joint_log_prob(state, batch.xt[:, :end], batch.yt[:, :end]).cpu()
        for end in block_ends(batch.xt.shape[1], net.joint_block_size)
    ]
    return torch.stack(prefixes, dim=-1).diff(dim=-1, prepend=torch.zeros_like(prefixes[0]).unsqueeze(-1))


def gp_block_log_likelihoods(batch: GPBatch, block_size: int) -> torch.Tensor:
    """The exact GP's counterpart of ``model_block_log_likelihoods`` (float64 [B, blocks]): block k's
    log-density given the context and blocks 1..k-1, from the multivariate normals of the prefixes."""
    prefixes = [
        gp_joint_log_likelihood(dataclasses.replace(batch, xt=batch.xt[:, :end], yt=batch.yt[:, :end])) * end
        for end in block_ends(batch.xt.shape[1], block_size)
    ]
    return torch.stack(prefixes, dim=-1).diff(dim=-1, prepend=torch.zeros_like(prefixes[0]).unsqueeze(-1))


def multi_block_ll(net: NeuralProcess, batches: list[GPBatch]) -> dict:
    """Joint LL per target of every task's targets, in autoregressive blocks, beside the exact GP."""
    block = net.joint_block_size
    model, oracle = [], []
    for b in tqdm(batches, desc="multi-block LL", mininterval=5, leave=False):
        model.append(model_block_log_likelihoods(net, b.to(net.device)))
        oracle.append(gp_block_log_likelihoods(b, block))
    model_blocks, oracle_blocks = torch.cat(model), torch.cat(oracle)
    num_targets = batches[0].xt.shape[1]
    ends = block_ends(num_targets, block)
    sizes = [end - start for start, end in zip([0, *ends], ends, strict=False)]
    model_ll, oracle_ll = model_blocks.sum(-1) / num_targets, oracle_blocks.sum(-1) / num_targets
    return {
        "targets": num_targets,
        "block_size": block,
        "model": summarise(model_ll),
        "oracle": summarise(oracle_ll),
        "model_minus_oracle": summarise(model_ll - oracle_ll),
        "per_block": {
            "model": [summarise(model_blocks[:, k] / n) for k, n in enumerate(sizes)],
            "oracle": [summarise(oracle_blocks[:, k] / n) for k, n in enumerate(sizes)],
        },
    }


def _mean_se(values: torch.Tensor) -> dict[str, float]:
    """``summarise`` of a per-task quantity that is not a log-likelihood: mean, se, num_tasks."""
    s = summarise(values)
    return {"mean": s.pop("ll"), **s}


@torch.no_grad()
def path_statistics(net: NeuralProcess, batches: list[GPBatch], num_samples: int, seed: int) -> dict:
    """Roughness ratios and minimum ranks of the model's joint paths on grid tasks, and of the exact
    GP's own paths (the control), with the exact GP posterior's expected roughness as reference."""
    g_model = torch.Generator(device=net.device).manual_seed(seed)
    g_gp = torch.Generator().manual_seed(seed + 1)
    rough_model, rough_gp, expected, ranks_model, ranks_gp = [], [], [], [], []
    for b in tqdm(batches, desc="sample paths", mininterval=5, leave=False):
        state = net.condition(b.xc.to(net.device), b.yc.to(net.device))
        paths = net.sample(state, b.xt.to(net.device), num_samples, generator=g_model)[..., 0].double().cpu()
        mean, cov = gp_posterior(b)
        gp_paths = gaussian_paths(mean, cov, num_samples, g_gp)
        truth = b.yt[..., 0].double()
        expected.append(expected_squared_increment(mean, cov))
        rough_model.append(mean_squared_increment(paths))
        rough_gp.append(mean_squared_increment(gp_paths))
        ranks_model.append(min_ranks(paths, truth))
        ranks_gp.append(min_ranks(gp_paths, truth))
    exp, model_msi, gp_msi = torch.cat(expected), torch.cat(rough_model), torch.cat(rough_gp)
    return {
        "grid": batches[0].xt.shape[1],
        "samples": num_samples,
        "roughness": {
            "model_ratio": _mean_se(model_msi / exp),
            "gp_ratio": _mean_se(gp_msi / exp),
            "model_ratio_of_means": (model_msi.mean() / exp.mean()).item(),
            "gp_expected_mean": exp.mean().item(),
        },
        "min_rank": {
            "model": uniformity_test(torch.cat(ranks_model), num_samples + 1),
            "gp": uniformity_test(torch.cat(ranks_gp), num_samples + 1),
        },
    }


def card_entries(result: dict) -> dict:
    """The headline numbers of one run for the model-card sidecar, keyed by kernel."""
    k, ll, paths = result["kernel"], result["multi_block"], result["paths"]
    rough, rank = paths["roughness"], paths["min_rank"]
    return {
        f"{k}_multiblock_joint_ll": round(ll["model"]["ll"], 4),
        f"{k}_multiblock_joint_ll_se": round(ll["model"]["se"], 4),
        f"{k}_multiblock_joint_oracle_ll": round(ll["oracle"]["ll"], 4),
        f"{k}_multiblock_targets": ll["targets"],
        f"{k}_multiblock_num_tasks": ll["model"]["num_tasks"],
        f"{k}_roughness_ratio": round(rough["model_ratio"]["mean"], 4),
        f"{k}_roughness_ratio_se": round(rough["model_ratio"]["se"], 4),
        f"{k}_roughness_gp_ratio": round(rough["gp_ratio"]["mean"], 4),
        f"{k}_min_rank_p": float(f"{rank['model']['p_value']:.3g}"),
        f"{k}_min_rank_mean": round(rank["model"]["mean_rank"], 4),
        f"{k}_min_rank_gp_p": float(f"{rank['gp']['p_value']:.3g}"),
        f"{k}_paths_num_tasks": rough["model_ratio"]["num_tasks"],
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--kernel", choices=("rbf", "matern", "periodic"), default="rbf")
    p.add_argument("--targets", type=int, default=200, help="multi-block LL: targets per task")
    p.add_argument("--num-batches", type=int, default=32, help="multi-block LL: batches of --batch-size tasks")
    p.add_argument("--grid", type=int, default=100, help="sample paths: sorted grid points per task")
    p.add_argument("--samples", type=int, default=19, help="sample paths per task (rank bins: samples + 1)")
    p.add_argument("--path-batches", type=int, default=64, help="sample paths: batches of --batch-size tasks")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="of the sample paths (the task sets have their own)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parse_evaluation_args(p, argv)
    net = load_checkpoint(args.checkpoint)
    if net.joint_block_size is None:
        p.error(f"{args.checkpoint} is a {net.architecture}; this evaluation needs a joint model (CMANP-AND)")
    t0 = time.time()
    result: dict = {"checkpoint": str(args.checkpoint), "fingerprint": net.fingerprint, "kernel": args.kernel}
    ll_tasks = joint_set(args.kernel, args.num_batches, args.batch_size, args.targets, False, args.cache_dir)
    result["multi_block"] = ll = multi_block_ll(net, ll_tasks)
    grid_tasks = joint_set(args.kernel, args.path_batches, args.batch_size, args.grid, True, args.cache_dir)
    result["paths"] = paths = path_statistics(net, grid_tasks, args.samples, args.seed)
    result["seconds"] = round(time.time() - t0, 1)
    _report(args.kernel, ll, paths)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    if args.card_json:
        write_card(args.card_json, read_card(args.card_json, net.fingerprint) | card_entries(result))
    return result


def _report(kernel: str, ll: dict, paths: dict) -> None:
    """Print the three measurements, each beside the exact GP."""
    m, o = ll["model"], ll["oracle"]
    print(f"{kernel}: joint LL per target, {ll['targets']} targets in blocks of {ll['block_size']}:")
    print(f"  model {m['ll']:.4f} ± {m['se']:.4f}   exact GP {o['ll']:.4f} ± {o['se']:.4f}   ({m['num_tasks']} tasks)")
    for k, (bm, bo) in enumerate(zip(ll["per_block"]["model"], ll["per_block"]["oracle"], strict=True)):
        print(f"  block {k + 1}: model {bm['ll']:.4f} ± {bm['se']:.4f}   exact GP {bo['ll']:.4f} ± {bo['se']:.4f}")
    rough, rank = paths["roughness"], paths["min_rank"]
    print(f"sample paths: {paths['samples']} per task on a {paths['grid']}-point grid")
    r, c = rough["model_ratio"], rough["gp_ratio"]
    print(
        f"  roughness / exact GP's expected: model {r['mean']:.3f} ± {r['se']:.3f}   "
        f"GP paths {c['mean']:.3f} ± {c['se']:.3f}"
    )
    for who in ("model", "gp"):
        t = rank[who]
        verdict = "passes" if t["passes"] else "fails"
        print(
            f"  min rank ({who}): chi2 {t['chi2']:.1f} on {t['dof']} dof, p = {t['p_value']:.3g} ({verdict}), "
            f"mean rank {t['mean_rank']:.3f}   histogram {t['histogram']}"
        )


if __name__ == "__main__":
    main()
