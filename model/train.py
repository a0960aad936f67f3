"""Meta-train a CMANP on GP tasks: ``python -m model.train [--config cfg.json] [flags] [--resume]``.

The config names its model, its data source (``"data": {"kind": "broad"}``, see ``model.data``) and its
training settings; flags override the training and model settings.

``--architecture cmanp-and`` trains a CMANP-AND (joint head, loss = minus the joint target
log-likelihood per target). With ``--init-from`` a plain CMANP checkpoint of the same base config
and ``freeze_base``, only the joint head is trained on top of that CMANP's encoder and decoder.

Resumable: a training state (weights, optimiser, step, RNG streams) is saved to ``<out>/last.pt``
every few minutes and on exit; ``--resume`` continues from it bit-for-bit given the same flags.
The best model on a small held-out set is exported to ``<out>/best.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from model.allocator import retain_freed_memory
from model.blocks import count_parameters
from model.checkpoint import ARCHITECTURES, build_model, load_checkpoint, save_checkpoint
from model.cmanp import CMANP, CMANPConfig
from model.cmanp_and import CMANPANDConfig
from model.data import DEFAULT_DATA, TaskBatch, TaskSampler, build_sampler
from model.neural_process import NeuralProcess


@dataclass
class TrainConfig:
    steps: int = 100_000
    batch_size: int = 16
    lr: float = 5e-4
    warmup_steps: int = 1000
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    # Context-size curriculum beyond the paper's protocol (N in 3..46), so sessions that grow
    # past 46 points keep improving: some batches have N log-uniform in [47, long_context_max],
    # and some have no context at all, which trains the prior an empty session returns.
    long_context_prob: float = 0.15
    long_context_max: int = 1000
    empty_context_prob: float = 0.02
    eval_every: int = 1000
    eval_batches: int = 64
    save_every_minutes: float = 3.0
    device: str = "cpu"
    threads: int = 0  # 0: leave torch's default
    freeze_base: bool = False  # CMANP-AND only: train the joint head alone, on a fixed CMANP
    # Speed (see training_loss): "bf16" runs the forward's matmuls in bfloat16 autocast (weights,
    # optimiser and likelihood stay float32); compile runs the loss through torch.compile.
    precision: str = "bf16"
    compile: bool = True
    run_steps: int = 0  # stop this invocation after this many steps (0: run to `steps`); resume later


def sample_training_batch(sampler: TaskSampler, tc: TrainConfig, g: torch.Generator) -> TaskBatch:
    """One batch from the curriculum in TrainConfig (all tasks share N and M)."""
    u = float(torch.rand((), generator=g))
    if u < tc.empty_context_prob:
        return sampler.sample(tc.batch_size, 0, int(torch.randint(3, 50, (), generator=g)), g)
    if u < tc.empty_context_prob + tc.long_context_prob:
        lo, hi = math.log(47), math.log(tc.long_context_max)
        nc = int(math.exp(lo + (hi - lo) * float(torch.rand((), generator=g))))
        return sampler.sample(tc.batch_size, nc, int(torch.randint(3, 50, (), generator=g)), g)
    return sampler.sample_protocol(tc.batch_size, g)


def heldout_batches(sampler: TaskSampler, n: int, batch_size: int, seed: int = 12345) -> list[TaskBatch]:
    """A small, fixed, held-out set from the training source's protocol (distinct from the evaluation seeds)."""
    g = torch.Generator().manual_seed(seed)
    return [sampler.sample_protocol(batch_size, g) for _ in range(n)]


@torch.no_grad()
def heldout_ll(net: NeuralProcess, batches: list[TaskBatch], device: str) -> float:
    was_training = net.training
    net.eval()
    lls = [net.log_likelihood(b.xc.to(device), b.yc.to(device), b.xt.to(device), b.yt.to(device)) for b in batches]
    net.train(was_training)
    return torch.cat(lls).mean().item()


LossFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
PRECISIONS = ("fp32", "bf16")


def training_loss(net: NeuralProcess, precision: str = "fp32", compile: bool = False) -> LossFn:
    """``net.loss`` for training, in the given precision, optionally compiled.

    "bf16" autocasts the forward's matmuls to bfloat16 (the CPU's bf16 dot products double the
    float32 rate); the parameters, their gradients, the optimiser and the output head stay float32.
    ``compile`` traces the loss once with dynamic shapes (contexts and targets vary in size) and
    fuses the elementwise passes; the first steps pay the compilation (about a minute with a warm
    inductor cache, several minutes cold). The net itself is not wrapped, so checkpoints and
    state dicts are unchanged, and evaluation (``heldout_ll``) runs eagerly in float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and net.joint_block_size is not None:
        # A joint head (mean and covariance factors) would run in bf16: not validated.
        raise ValueError(
            f"bf16 training is validated for marginal heads only: use precision fp32 for {net.architecture}"
        )

    def loss(xc: Tensor, yc: Tensor, xt: Tensor, yt: Tensor) -> Tensor:
        with torch.autocast(net.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return net.loss(xc, yc, xt, yt)

    return torch.compile(loss, dynamic=True) if compile else loss


def train_step(
    net: NeuralProcess, opt: torch.optim.Optimizer, batch: TaskBatch, grad_clip: float, loss_fn: LossFn | None = None
) -> Tensor:
    """One optimiser step on a batch; returns the (detached) loss. ``loss_fn`` (default
    ``net.loss``) comes from ``training_loss``. Clips the gradients of the optimiser's
    parameters only: a frozen base (``freeze_base``) has none."""
    loss = (loss_fn or net.loss)(batch.xc, batch.yc, batch.xt, batch.yt)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], grad_clip)
    opt.step()
    return loss.detach()


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup, then cosine decay to zero."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
    return tc.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(
    mc: CMANPConfig,
    tc: TrainConfig,
    out: Path,
    resume: bool,
    init_from: Path | None = None,
    architecture: str = CMANP.architecture,
    data: dict | None = None,
    warm_start: bool = False,
) -> None:
    """Train ``mc`` on the data source ``data`` (default: the paper's RBF GP tasks) into ``out``.

    ``init_from`` continues an exported checkpoint at its recorded step; with ``warm_start`` it only
    takes the weights, and the schedule and held-out record start afresh (fine-tuning on a new source).
    """
    data = dict(data or DEFAULT_DATA)
    out.mkdir(parents=True, exist_ok=True)
    retain_freed_memory()  # steady step times: no page faults on re-allocated activations
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    net = build_model(mc).to(tc.device)
    if tc.freeze_base:
        if net.joint_block_size is None:
            raise ValueError("freeze_base needs a model with a joint head (--architecture cmanp-and)")
        for p in net.base_parameters():
            p.requires_grad_(False)
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay, fused=tc.device == "cpu")
    g = torch.Generator().manual_seed(tc.seed + 1)
    step, best, elapsed = 0, -math.inf, 0.0
    state_path = out / "last.pt"
    if resume and state_path.exists():
        # weights_only: tensors and plain containers only, no code is unpickled.
        ckpt = torch.load(state_path, map_location=tc.device, weights_only=True)
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optim"])
        g.set_state(ckpt["data_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        step, best, elapsed = ckpt["step"], ckpt["best"], ckpt["elapsed"]
        print(f"resumed at step {step} (best held-out LL {best:.4f}, {elapsed / 60:.1f} min trained)")
    elif init_from is not None:
        # Continue from exported weights (e.g. a committed checkpoint in a new session): the
        # schedule resumes at the recorded step; the optimiser moments start afresh.
        init = load_checkpoint(init_from)
        if init.cfg == mc:
            net.load_state_dict(init.state_dict())
            if warm_start:
                print(f"warm start from the weights of {init_from}; schedule from step 0")
            else:
                step, best = int(init.info.get("step", 0)), float(init.info.get("heldout_ll", -math.inf))
                elapsed = float(init.info.get("train_seconds", 0.0))
                print(f"initialised from {init_from} at step {step}")
        elif net.joint_block_size is not None and init.joint_block_size is None and init.cfg == mc.base():
            # A new joint head on a trained CMANP: its schedule and held-out record start afresh.
            net.load_state_dict(init.state_dict(), strict=False)
            net.init_joint_mean_from_base()
            print(f"joint head initialised on the CMANP {init_from}")
        else:
            raise ValueError(f"{init_from} has config {init.cfg}, not {mc}")
    (out / "config.json").write_text(
        json.dumps({"architecture": architecture, "model": mc.to_dict(), "data": data, "train": asdict(tc)}, indent=2)
    )

    def save_state() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save(
            {
                "model": net.state_dict(),
                "optim": opt.state_dict(),
                "data_rng": g.get_state(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "best": best,
                "elapsed": elapsed,
            },
            tmp,
        )
        tmp.replace(state_path)

    sampler = build_sampler(data, mc.dim_x, mc.x_range)
    heldout = heldout_batches(sampler, tc.eval_batches, tc.batch_size)
    trained = sum(p.numel() for p in trainable)
    print(f"model: {count_parameters(net):,} parameters ({trained:,} trained); training to step {tc.steps}")
    net.train()
    loss_fn = training_loss(net, tc.precision, tc.compile)
    last_save, t0, tasks = time.time(), time.time(), 0
    # A background job ignores SIGINT and dies on SIGTERM without unwinding: make both raise
    # KeyboardInterrupt, so the `finally` below saves the training state before exiting.
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=tc.steps, initial=step, dynamic_ncols=True, mininterval=5)
    ema = None
    stop = min(tc.steps, step + tc.run_steps) if tc.run_steps else tc.steps
    try:
        while step < stop:
            batch = sample_training_batch(sampler, tc, g).to(tc.device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, tc)
            loss = train_step(net, opt, batch, tc.grad_clip, loss_fn)
            step += 1
            tasks += tc.batch_size
            ema = loss.item() if ema is None else 0.99 * ema + 0.01 * loss.item()
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{ema:.3f}", tasks_s=f"{tasks / (time.time() - t0):.0f}")
            if step % tc.eval_every == 0 or step == tc.steps:
                ll = heldout_ll(net, heldout, tc.device)
                tqdm.write(f"step {step}: held-out LL {ll:.4f} (best {max(best, ll):.4f})")
                if ll > best:
                    best = ll
                    save_checkpoint(
                        net,
                        out / "best.safetensors",
                        info={
                            "step": step,
                            "heldout_ll": ll,
                            "data": data,
                            "train": asdict(tc),
                            "train_seconds": elapsed + time.time() - last_save,
                            "torch": torch.__version__,
                        },
                    )
            now = time.time()
            if now - last_save > 60 * tc.save_every_minutes:
                elapsed += now - last_save
                last_save = now
                save_state()
    finally:
        elapsed += time.time() - last_save
        save_state()
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"stopped at step {step}; state in {state_path}")


def _add_dataclass_flags(p: argparse.ArgumentParser, cls: type) -> None:
    for f in fields(cls):
        if f.name == "x_range":
            continue
        kind = _parse_bool if isinstance(f.default, bool) else type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None)


def _parse_bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help='JSON file {"model": {...}, "train": {...}}; flags override it')
    p.add_argument("--out", type=Path, default=Path("runs/cmanp"))
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt if it exists")
    p.add_argument("--init-from", type=Path, help="start from an exported .safetensors checkpoint and its step")
    p.add_argument("--architecture", choices=sorted(ARCHITECTURES), help="default: the config file's, else cmanp")
    p.add_argument(
        "--warm-start", action="store_true", help="with --init-from: take its weights, start the schedule at 0"
    )
    _add_dataclass_flags(p, CMANPANDConfig)
    _add_dataclass_flags(p, TrainConfig)
    args = p.parse_args(argv)
    file = json.loads(args.config.read_text()) if args.config else {}

    def build(cls: type, section: dict):  # noqa: ANN202 - returns an instance of cls
        values = dict(section)
        for f in fields(cls):
            flag = getattr(args, f.name, None)
            if flag is not None:
                values[f.name] = flag
        return cls(**values)

    architecture = args.architecture or file.get("architecture", CMANP.architecture)
    train(
        build(ARCHITECTURES[architecture][1], file.get("model", {})),
        build(TrainConfig, file.get("train", {})),
        args.out,
        args.resume,
        args.init_from,
        architecture,
        file.get("data"),
        args.warm_start,
    )


if __name__ == "__main__":
    main()
