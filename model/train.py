"""Meta-train a model on its config's data source: ``python -m model.train [--config cfg.json] [flags] [--resume]``.

The config names its model (``"architecture"``, ``"model"``), its data source (``"data": {"kind":
"broad", ...}``, see ``model.data``) and its training settings (``"train"``); flags override them.

``train()`` runs three steps: ``start`` builds the model and optimiser or resumes them, ``fit`` is
the loop and ``save_state`` / ``export_best`` write the results. The loop knows no family: a data
source gives batches (``model.data.TrainingSource``) and the model scores them (``Trainable``).

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
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn
from tqdm import tqdm

from model.allocator import retain_freed_memory
from model.blocks import count_parameters
from model.checkpoint import ARCHITECTURES, build_model, load_checkpoint, save_checkpoint
from model.cmanp import CMANP, CMANPConfig
from model.data import DEFAULT_DATA, Batch, TrainingSource, build_source
from model.data.regression import ContextCurriculum
from model.embedding_init import init_embeddings


class Trainable(Protocol):
    """What the loop needs from a model, besides being an ``nn.Module`` registered in
    ``model.checkpoint.ARCHITECTURES`` (which ``save_checkpoint`` and ``--resume`` rely on)."""

    trains_in_bf16: bool  # whether bf16 autocast training is validated for this model

    def loss(self, batch: Batch) -> Tensor:
        """The scalar the optimiser minimises on a training batch."""
        ...

    def heldout_score(self, batch: Batch) -> Tensor:
        """One score per sequence or task of a held-out batch [B], higher is better (e.g. the mean
        log-likelihood per target); the best mean over the held-out set is exported."""
        ...


@dataclass
class TrainConfig:
    steps: int = 100_000
    batch_size: int = 16
    lr: float = 5e-4
    warmup_steps: int = 1000
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 1000
    eval_batches: int = 64
    save_every_minutes: float = 3.0
    device: str = "cpu"
    threads: int = 0  # 0: leave torch's default
    freeze_base: bool = False  # CMANP-AND only: train the joint head alone, on a fixed CMANP
    # CMANP-AND with a trained base: the base's lr as a fraction of lr (end-to-end fine-tuning
    # under a trained joint head: the base moves little, the marginal head keeps its own loss).
    base_lr_scale: float = 1.0
    # Speed (see training_loss): "bf16" runs the forward's matmuls in bfloat16 autocast (weights,
    # optimiser and likelihood stay float32); compile runs the loss through torch.compile.
    precision: str = "bf16"
    compile: bool = True
    run_steps: int = 0  # stop this invocation after this many steps (0: run to `steps`); resume later
    # How a fresh model's embedding MLPs start (model.embedding_init): "torch" (its default init)
    # or "variance_preserving", without which a 2-D model stays long at the unconditional solution.
    embed_init: str = "torch"
    # > 0: train on the beta-NLL (NeuralProcess.beta_nll_loss) instead of the NLL; the held-out score
    # that picks the exported weights stays the plain log-likelihood. Marginal models only.
    nll_beta: float = 0.0


# Options of the regression sources that older configs (and run directories) keep in "train".
LEGACY_DATA_KEYS = tuple(f.name for f in fields(ContextCurriculum))
HELDOUT_SEED = 12345  # the held-out set's own stream, distinct from the evaluation seeds


@dataclass
class Run:
    """What the loop advances and ``save_state`` writes (the format of ``last.pt``)."""

    net: nn.Module
    opt: torch.optim.Optimizer
    data_rng: torch.Generator  # every batch is drawn from it
    step: int = 0
    best: float = -math.inf  # the best held-out score so far
    elapsed: float = 0.0  # training seconds before this invocation's last save


def heldout_batches(source: TrainingSource, n: int, batch_size: int, seed: int = HELDOUT_SEED) -> list[Batch]:
    """A small, fixed, held-out set drawn from the training source."""
    g = torch.Generator().manual_seed(seed)
    return [source.heldout_batch(batch_size, g) for _ in range(n)]


@torch.no_grad()
def heldout_score(net: Trainable, batches: list[Batch], device: str) -> float:
    """The mean of ``net.heldout_score`` over every task of the held-out set, in eval mode."""
    was_training = net.training
    net.eval()
    scores = [net.heldout_score(b.to(device)) for b in batches]
    net.train(was_training)
    return torch.cat(scores).mean().item()


LossFn = Callable[[Batch], Tensor]
PRECISIONS = ("fp32", "bf16")


def training_loss(net: Trainable, precision: str = "fp32", compile: bool = False, nll_beta: float = 0.0) -> LossFn:
    """``net.loss`` (with ``nll_beta`` > 0, ``net.beta_nll_loss``) for training, in the given precision,
    optionally compiled.

    "bf16" autocasts the forward's matmuls to bfloat16 (the CPU's bf16 dot products double the
    float32 rate); the parameters, their gradients, the optimiser and the output head stay float32.
    ``compile`` traces the loss once with dynamic shapes (contexts and targets vary in size) and
    fuses the elementwise passes; the first steps pay the compilation (about a minute with a warm
    inductor cache, several minutes cold). The net itself is not wrapped, so checkpoints and
    state dicts are unchanged, and evaluation (``heldout_score``) runs eagerly in float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and not net.trains_in_bf16:
        raise ValueError(
            f"bf16 training is not validated for {getattr(net, 'architecture', type(net).__name__)}: use precision fp32"
        )
    if nll_beta < 0 or (nll_beta and (not hasattr(net, "beta_nll_loss") or net.joint_block_size is not None)):
        raise ValueError(
            f"nll_beta must be >= 0, and 0 unless the model's predictions are marginal Gaussians; got {nll_beta}"
        )
    device_type = next(net.parameters()).device.type

    def loss(batch: Batch) -> Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return net.beta_nll_loss(batch, nll_beta) if nll_beta else net.loss(batch)

    return torch.compile(loss, dynamic=True) if compile else loss


def train_step(
    net: Trainable, opt: torch.optim.Optimizer, batch: Batch, grad_clip: float, loss_fn: LossFn | None = None
) -> Tensor:
    """One optimiser step on a batch; returns the (detached) loss. ``loss_fn`` (default
    ``net.loss``) comes from ``training_loss``. Clips the gradients of the optimiser's
    parameters only: a frozen base (``freeze_base``) has none."""
    loss = (loss_fn or net.loss)(batch)
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


# ---- building or resuming -------------------------------------------------------------------
def start(
    mc: CMANPConfig,
    tc: TrainConfig,
    state_path: Path,
    resume: bool,
    init_from: Path | None = None,
    warm_start: bool = False,
) -> Run:
    """A fresh model and optimiser for ``mc``, resumed from ``state_path`` (``last.pt``) with
    ``resume``, else initialised from the exported checkpoint ``init_from`` if given.

    ``init_from`` continues an exported checkpoint at its recorded step; with ``warm_start`` it only
    takes the weights, and the schedule and held-out record start afresh (fine-tuning on a new source).
    """
    torch.manual_seed(tc.seed)
    net = build_model(mc).to(tc.device)
    init_embeddings(net, tc.embed_init)  # resumed or initialised weights replace it below
    if tc.freeze_base:
        if getattr(net, "joint_block_size", None) is None:
            raise ValueError("freeze_base needs a model with a joint head (--architecture cmanp-and)")
        for p in net.base_parameters():
            p.requires_grad_(False)
    trainable = [p for p in net.parameters() if p.requires_grad]
    groups: list[dict] = [{"params": trainable}]
    if tc.base_lr_scale != 1.0:
        if tc.freeze_base or getattr(net, "joint_block_size", None) is None or not tc.base_lr_scale > 0:
            raise ValueError("base_lr_scale (> 0) needs a model with a joint head and freeze_base false")
        base = {id(p) for p in net.base_parameters()}
        groups = [
            {"params": [p for p in trainable if id(p) not in base]},
            {"params": [p for p in trainable if id(p) in base], "lr_scale": tc.base_lr_scale},
        ]
    opt = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay, fused=tc.device == "cpu")
    run = Run(net, opt, torch.Generator().manual_seed(tc.seed + 1))
    if resume and state_path.exists():
        load_state(run, state_path, tc.device)
        print(f"resumed at step {run.step} (best held-out LL {run.best:.4f}, {run.elapsed / 60:.1f} min trained)")
    elif init_from is not None:
        # Continue from exported weights (e.g. a committed checkpoint in a new session): the
        # schedule resumes at the recorded step; the optimiser moments start afresh.
        init = load_checkpoint(init_from)
        # A warm start may change the std floor: it is a constant of the head, not a weight, and
        # fine-tuning under a new floor re-fits the stds around it.
        floor_only = warm_start and hasattr(mc, "min_std") and init.cfg == replace(mc, min_std=init.cfg.min_std)
        # A warm start may add an event model's spectrum (model.event_spectrum): its read-out starts
        # at zero, so the new model begins as the checkpoint's and learns to use the new input.
        adds_spectrum = (
            warm_start
            and getattr(mc, "spectrum_bands", 0) > 0
            and init.cfg.to_dict() == {k: v for k, v in mc.to_dict().items() if not k.startswith("spectrum_")}
        )
        if adds_spectrum:
            missing, unexpected = net.load_state_dict(init.state_dict(), strict=False)
            if unexpected or not all(name.startswith("spectrum_proj.") for name in missing):
                raise ValueError(f"{init_from} does not match {mc} outside the spectrum: {missing} {unexpected}")
            print(f"warm start from the weights of {init_from}, a spectrum added; schedule from step 0")
        elif init.cfg == mc or floor_only:
            net.load_state_dict(init.state_dict())
            if warm_start:
                print(f"warm start from the weights of {init_from}; schedule from step 0")
            else:
                run.step, run.best = int(init.info.get("step", 0)), float(init.info.get("heldout_ll", -math.inf))
                run.elapsed = float(init.info.get("train_seconds", 0.0))
                print(f"initialised from {init_from} at step {run.step}")
        elif (
            getattr(net, "joint_block_size", None) is not None
            and init.joint_block_size is None
            and init.cfg == mc.base()
        ):
            # A new joint head on a trained CMANP: its schedule and held-out record start afresh.
            net.load_state_dict(init.state_dict(), strict=False)
            net.init_joint_mean_from_base()
            print(f"joint head initialised on the CMANP {init_from}")
        else:
            raise ValueError(f"{init_from} has config {init.cfg}, not {mc}")
    return run


def load_state(run: Run, path: Path, device: str) -> None:
    """Restore a ``last.pt`` written by ``save_state`` (or by the code before it: same format)."""
    # weights_only: tensors and plain containers only, no code is unpickled.
    ckpt = torch.load(path, map_location=device, weights_only=True)
    run.net.load_state_dict(ckpt["model"])
    check_moments(run.opt, ckpt["optim"], path)
    run.opt.load_state_dict(ckpt["optim"])
    run.data_rng.set_state(ckpt["data_rng"])
    torch.set_rng_state(ckpt["torch_rng"])
    run.step, run.best, run.elapsed = ckpt["step"], ckpt["best"], ckpt["elapsed"]


def check_moments(opt: torch.optim.Optimizer, saved: dict, path: Path) -> None:
    """Raise ValueError unless every saved moment has the shape of the parameter at its position.

    AdamW keeps its moments by parameter position, not name: a model whose parameters were
    registered in another order would pair moments with the wrong tensors (the fused CPU step
    crashes the process on a shape mismatch rather than raising)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    for i, moments in saved["state"].items():
        if i >= len(params):
            raise ValueError(
                f"{path}: the optimiser state has moments for {i + 1}+ parameters, the model {len(params)}"
            )
        for key, t in moments.items():
            if torch.is_tensor(t) and t.dim() > 0 and t.shape != params[i].shape:
                raise ValueError(
                    f"{path}: optimiser moment {key} of parameter {i} has shape {tuple(t.shape)}, the parameter "
                    f"{tuple(params[i].shape)}: the model's parameters are registered in another order or shape"
                )


# ---- saving -----------------------------------------------------------------------------------
def save_state(run: Run, path: Path) -> None:
    """Write the training state atomically: weights, optimiser, step, best score, both RNG streams."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": run.net.state_dict(),
            "optim": run.opt.state_dict(),
            "data_rng": run.data_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "step": run.step,
            "best": run.best,
            "elapsed": run.elapsed,
        },
        tmp,
    )
    tmp.replace(path)


def export_best(run: Run, path: Path, score: float, seconds: float, record: dict) -> None:
    """Export the current weights as a checkpoint, with the step, the held-out score and ``record``."""
    info = {"step": run.step, "heldout_ll": score, **record, "train_seconds": seconds, "torch": torch.__version__}
    save_checkpoint(run.net, path, info=info)


# ---- the loop ---------------------------------------------------------------------------------
def fit(run: Run, source: TrainingSource, tc: TrainConfig, out: Path, record: dict) -> None:
    """Train ``run`` on batches of ``source`` up to ``tc.steps`` (or ``tc.run_steps`` more steps).

    Every ``eval_every`` steps the held-out score is computed and, when it is the best so far,
    the weights go to ``<out>/best.safetensors`` with ``record`` in their info. The training
    state goes to ``<out>/last.pt`` every ``save_every_minutes`` and when the loop stops, for any
    reason (SIGINT and SIGTERM included).
    """
    state_path = out / "last.pt"
    net, opt, g = run.net, run.opt, run.data_rng
    heldout = heldout_batches(source, tc.eval_batches, tc.batch_size)
    trained = sum(p.numel() for group in opt.param_groups for p in group["params"])
    print(f"model: {count_parameters(net):,} parameters ({trained:,} trained); training to step {tc.steps}")
    net.train()
    loss_fn = training_loss(net, tc.precision, tc.compile, tc.nll_beta)
    last_save, t0, tasks = time.time(), time.time(), 0
    # A background job ignores SIGINT and dies on SIGTERM without unwinding: make both raise
    # KeyboardInterrupt, so the `finally` below saves the training state before exiting.
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=tc.steps, initial=run.step, dynamic_ncols=True, mininterval=5)
    ema = None
    stop = min(tc.steps, run.step + tc.run_steps) if tc.run_steps else tc.steps
    try:
        while run.step < stop:
            batch = source.sample_batch(tc.batch_size, g).to(tc.device)
            for group in opt.param_groups:
                group["lr"] = lr_at(run.step, tc) * group.get("lr_scale", 1.0)
            loss = train_step(net, opt, batch, tc.grad_clip, loss_fn)
            run.step += 1
            tasks += tc.batch_size
            ema = loss.item() if ema is None else 0.99 * ema + 0.01 * loss.item()
            bar.update(1)
            if run.step % 50 == 0:
                bar.set_postfix(loss=f"{ema:.3f}", tasks_s=f"{tasks / (time.time() - t0):.0f}")
            if run.step % tc.eval_every == 0 or run.step == tc.steps:
                score = heldout_score(net, heldout, tc.device)
                tqdm.write(f"step {run.step}: held-out LL {score:.4f} (best {max(run.best, score):.4f})")
                if score > run.best:
                    run.best = score
                    export_best(run, out / "best.safetensors", score, run.elapsed + time.time() - last_save, record)
            now = time.time()
            if now - last_save > 60 * tc.save_every_minutes:
                run.elapsed += now - last_save
                last_save = now
                save_state(run, state_path)
    finally:
        run.elapsed += time.time() - last_save
        save_state(run, state_path)
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"stopped at step {run.step}; state in {state_path}")


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
    """Train ``mc`` on the data source ``data`` (default: the paper's RBF GP tasks) into ``out``."""
    data = dict(data or DEFAULT_DATA)
    out.mkdir(parents=True, exist_ok=True)
    retain_freed_memory()  # steady step times: no page faults on re-allocated activations
    if tc.threads:
        torch.set_num_threads(tc.threads)
    run = start(mc, tc, out / "last.pt", resume, init_from, warm_start)
    (out / "config.json").write_text(
        json.dumps({"architecture": architecture, "model": mc.to_dict(), "data": data, "train": asdict(tc)}, indent=2)
    )
    fit(run, build_source(data, mc), tc, out, record={"data": data, "train": asdict(tc)})


def _add_dataclass_flags(p: argparse.ArgumentParser, cls: type, taken: set[str]) -> None:
    """A flag per field of ``cls``; a field in ``taken`` (a flag another config added) shares that flag."""
    for f in fields(cls):
        if f.name == "x_range" or f.name in taken:
            continue
        taken.add(f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, tuple):  # numbers: a (low, high) pair, or a list (the config checks which)
            p.add_argument(flag, type=float, nargs="+", default=None)
            continue
        kind = _parse_bool if isinstance(f.default, bool) else type(f.default)
        p.add_argument(flag, type=kind, default=None)


def _parse_bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


def data_spec(file: dict, flags: dict) -> tuple[dict, dict]:
    """The data spec of a config file with its flags applied, and the file's train section without
    the data options that older configs keep there (the regression curriculum)."""
    data, train_section = dict(file.get("data") or DEFAULT_DATA), dict(file.get("train", {}))
    for key in LEGACY_DATA_KEYS:
        if key in train_section:
            value = train_section.pop(key)
            if data.setdefault(key, value) != value:
                raise ValueError(f"{key} is set in both the data ({data[key]}) and train ({value}) sections")
    data.update({k: v for k, v in flags.items() if v is not None})
    return data, train_section


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
    taken: set[str] = set()
    for _, config in ARCHITECTURES.values():  # model flags: the union of every architecture's fields
        _add_dataclass_flags(p, config, taken)
    _add_dataclass_flags(p, TrainConfig, taken)
    _add_dataclass_flags(p, ContextCurriculum, taken)  # options of the data source, kept as flags
    args = p.parse_args(argv)
    file = json.loads(args.config.read_text()) if args.config else {}
    data, train_section = data_spec(file, {k: getattr(args, k) for k in LEGACY_DATA_KEYS})

    def build(cls: type, section: dict):  # noqa: ANN202 - returns an instance of cls
        values = dict(section)
        for f in fields(cls):
            flag = getattr(args, f.name, None)
            if flag is not None:
                values[f.name] = flag
        return cls(**values)

    architecture = args.architecture or file.get("architecture", CMANP.architecture)
    model_config = ARCHITECTURES[architecture][1]
    own = {f.name for f in fields(model_config)}
    foreign = {
        f.name
        for _, config in ARCHITECTURES.values()
        for f in fields(config)
        if f.name not in own and getattr(args, f.name, None) is not None
    }
    if foreign:
        p.error(f"{sorted(foreign)} are not options of the {architecture} architecture")
    train(
        build(model_config, file.get("model", {})),
        build(TrainConfig, train_section),
        args.out,
        args.resume,
        args.init_from,
        architecture,
        data,
        args.warm_start,
    )


if __name__ == "__main__":
    main()
