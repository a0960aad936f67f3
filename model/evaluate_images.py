"""Image completion scored on held-out images, beside a GP fitted to each context (docs/MODEL.md, section 10).

    python -m model.evaluate --checkpoint C --data mnist [--out r.json] [--card-json C.json]

On the held-out digits and, out of distribution, on the faces (``model.data.images``):

* **protocol**: tasks of the image protocol (N ~ U{3..197}, M ~ U{3..200-N}, disjoint), each
  held-out image in turn from a fixed seed; the target log-likelihood per pixel, averaged over a
  task's targets, then over tasks, with its standard error over tasks.
* **completion curve**: N = 10, 50, 100, 200, 500 revealed pixels of each image (nested: the first
  N of one random order per image, as a session revealing more), every pixel of the image a
  target: the LL per pixel over all of them (``all``: the grid a user sees, revealed pixels
  included) and over the hidden ones only (``hidden``).
* **baseline**: ``bench.baselines.fitted_gp``'s RBF + white-noise GP on the pixel coordinates,
  ML-II on each task's context alone (``GP_RESTARTS`` extra optimizer starts). Its predictive std
  is floored at the model's ``min_std``: exact background pixels otherwise reward whichever side
  has the smaller floor, not the better prediction.

The model is scored through its streaming API (condition, then predict), as the service runs it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from model.data.images import DATASETS, X_RANGE, Dataset, ImageBatch, ImageSampler, protocol_sizes
from model.neural_process import NeuralProcess
from model.scores import summarise

PROTOCOL_SEED = 4000  # plus the dataset's index
COMPLETION_SEED = 5000  # plus the dataset's index; the same for every N, so reveals are nested
CONTEXT_SIZES = (10, 50, 100, 200, 500)
GP_RESTARTS = 2
OOD: dict[Dataset, tuple[Dataset, ...]] = {"mnist": ("mnist", "faces")}  # --data mnist scores both

Predictor = Callable[[ImageBatch], tuple[Tensor, Tensor]]  # -> mean, variance [B, N + M, 1] at context, targets


def _heldout_order(sampler: ImageSampler, seed: int) -> tuple[Tensor, torch.Generator]:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(len(sampler.images), generator=g), g


def protocol_tasks(dataset: Dataset, num_batches: int, batch_size: int) -> list[ImageBatch]:
    """Protocol batches on the held-out images, each image in turn (a seeded order), from a fixed seed."""
    sampler = ImageSampler(dataset, "heldout")
    order, g = _heldout_order(sampler, PROTOCOL_SEED + DATASETS.index(dataset))
    batches = []
    for b in range(num_batches):
        images = order[(b * batch_size + torch.arange(batch_size)) % len(order)]
        batches.append(sampler.tasks(images, *protocol_sizes(g), g))
    return batches


def completion_tasks(dataset: Dataset, num_context: int, num_images: int, batch_size: int) -> list[ImageBatch]:
    """The first ``num_images`` held-out images (a seeded order), ``num_context`` pixels revealed and every
    other pixel a target; the same seed for every N, so a larger N reveals more of the same order."""
    sampler = ImageSampler(dataset, "heldout")
    order, g = _heldout_order(sampler, COMPLETION_SEED + DATASETS.index(dataset))
    images = order[:num_images]
    hidden = sampler.images.num_pixels - num_context
    chunks = images.split(batch_size)
    return [sampler.tasks(chunk, num_context, hidden, g) for chunk in chunks]


def pixel_log_likelihood(mean: Tensor, variance: Tensor, y: Tensor) -> Tensor:
    """The Gaussian log-density of each pixel [B, n] (one output dimension)."""
    ll = -0.5 * (math.log(2 * math.pi) + variance.log() + (y - mean).square() / variance)
    return ll.sum(-1)


def model_predictor(net: NeuralProcess) -> Predictor:
    """The model conditioned on each task's context, predicting at its context and target pixels."""

    @torch.no_grad()
    def predict(batch: ImageBatch) -> tuple[Tensor, Tensor]:
        batch = batch.to(net.device)
        state = net.condition(batch.xc, batch.yc)
        mean, variance = net.predict(state, torch.cat([batch.xc, batch.xt], 1))
        return mean.double().cpu(), variance.double().cpu()

    return predict


def gp_predictor(min_std: float, restarts: int = GP_RESTARTS) -> Predictor:
    """An RBF + white-noise GP fitted by ML-II to each task's context (float64), predicting at its context
    and target pixels; variances floored at ``min_std ** 2``."""
    from bench.baselines.fitted_gp import fit  # the baseline is a development tool (scikit-learn)

    def predict(batch: ImageBatch) -> tuple[Tensor, Tensor]:
        means, variances = [], []
        points = torch.cat([batch.xc, batch.xt], 1).double().numpy()
        for task in range(len(points)):
            context = batch.xc[task].double().numpy()
            fitted = fit("rbf", context, batch.yc[task, :, 0].double().numpy(), *X_RANGE, restarts=restarts)
            mean, variance = fitted.predict(points[task])
            means.append(mean)
            variances.append(np.maximum(variance, min_std**2))
        return torch.from_numpy(np.stack(means)).unsqueeze(-1), torch.from_numpy(np.stack(variances)).unsqueeze(-1)

    return predict


def task_scores(predict: Predictor, batches: Sequence[ImageBatch], desc: str) -> tuple[Tensor, Tensor, Tensor]:
    """Per task, the mean LL per pixel over its targets and over all its pixels (context included), and the
    RMSE of the predicted mean over all its pixels: three [T]. The RMSE shows whether a predictor conditions:
    the LL of mostly-background targets is high for the average digit alone (checkpoints/HISTORY.md)."""
    targets, every, rmse = [], [], []
    for batch in tqdm(batches, desc=desc, mininterval=5, leave=False):
        mean, variance = predict(batch)
        y = torch.cat([batch.yc, batch.yt], 1).double()
        ll = pixel_log_likelihood(mean, variance, y)
        targets.append(ll[:, batch.xc.shape[1] :].mean(-1))
        every.append(ll.mean(-1))
        rmse.append((mean - y).square().mean((1, 2)).sqrt())
    return torch.cat(targets), torch.cat(every), torch.cat(rmse)


def _summary(values: Tensor) -> dict[str, float]:
    """Mean ± standard error, and the median: a fitted GP's rare certain misses swamp its mean."""
    return summarise(values) | {"median": values.double().median().item()}


def evaluate_set(
    predictors: dict[str, Predictor],
    dataset: Dataset,
    num_batches: int,
    batch_size: int,
    num_images: int,
    context_sizes: Sequence[int],
) -> tuple[dict, dict[str, float]]:
    """The protocol and the completion curve of one image set for each predictor, and each one's seconds."""
    result: dict = {"protocol": {}, "completion": {str(n): {} for n in context_sizes}}
    seconds = dict.fromkeys(predictors, 0.0)
    protocol = protocol_tasks(dataset, num_batches, batch_size)
    curve = {n: completion_tasks(dataset, n, num_images, batch_size) for n in context_sizes}
    for name, predict in predictors.items():
        start = time.perf_counter()
        result["protocol"][name] = _summary(task_scores(predict, protocol, f"{dataset} {name}")[0])
        for n, batches in curve.items():
            hidden, every, rmse = task_scores(predict, batches, f"{dataset} N={n} {name}")
            result["completion"][str(n)][name] = {
                "all": _summary(every),
                "hidden": _summary(hidden),
                "rmse": rmse.mean().item(),
            }
        seconds[name] = time.perf_counter() - start
    return result, seconds


def evaluate_images(
    net: NeuralProcess,
    data: Dataset,
    num_batches: int = 20,
    batch_size: int = 16,
    num_images: int = 32,
    context_sizes: Sequence[int] = CONTEXT_SIZES,
    gp: bool = True,
    gp_restarts: int = GP_RESTARTS,
) -> dict:
    """Every set of ``OOD[data]`` scored by the model and (``gp``) the fitted GP; prints a table."""
    predictors = {"model": model_predictor(net)}
    if gp:
        predictors["gp"] = gp_predictor(net.cfg.min_std, gp_restarts)
    result: dict = {"mode": "images", "data": data, "sets": {}, "seconds": dict.fromkeys(predictors, 0.0)}
    result["protocol"] = {"num_batches": num_batches, "batch_size": batch_size, "num_images": num_images}
    if gp:
        result["baseline"] = {"kernel": "rbf + white", "restarts": gp_restarts, "min_std": net.cfg.min_std}
    for dataset in OOD[data]:
        scores, seconds = evaluate_set(predictors, dataset, num_batches, batch_size, num_images, context_sizes)
        result["sets"][dataset] = scores
        for name, s in seconds.items():
            result["seconds"][name] = round(result["seconds"][name] + s, 1)
        print(format_set(dataset, scores), flush=True)
    return result


def _cell(summary: dict[str, float]) -> str:
    return f"{summary['ll']:>9.3f} ± {summary['se']:<7.3f} [{summary['median']:6.3f}]"


def format_set(dataset: str, scores: dict) -> str:
    """The set's numbers as a table, mean ± standard error [median]: the protocol's target LL per pixel,
    then the curve over all pixels and over the hidden ones, and the RMSE of the mean over all pixels."""
    names = list(scores["protocol"])
    lines = [f"{dataset}, protocol: " + "   ".join(f"{name} {_cell(scores['protocol'][name])}" for name in names)]
    head = " ".join(f"{f'{name}, {part}':>28}" for name in names for part in ("all", "hidden"))
    lines.append(f"{'N':>6} {head} " + " ".join(f"{f'{name}, rmse':>12}" for name in names))
    for n, row in scores["completion"].items():
        cells = " ".join(_cell(row[name][part]) for name in names for part in ("all", "hidden"))
        lines.append(f"{n:>6} {cells} " + " ".join(f"{row[name]['rmse']:>12.4f}" for name in names))
    return "\n".join(lines)


def card_entries(result: dict) -> dict:
    """The headline numbers of an images run, as model-card sidecar keys (``model.evaluate.update_card_json``)."""
    card: dict = {}
    for dataset, scores in result["sets"].items():
        for name, summary in scores["protocol"].items():
            prefix = dataset if name == "model" else f"{dataset}_{name}"
            card[f"{prefix}_ll"] = round(summary["ll"], 4)
            card[f"{prefix}_ll_se"] = round(summary["se"], 4)
        card[f"{dataset}_num_tasks"] = scores["protocol"]["model"]["num_tasks"]
        for name in scores["protocol"]:
            suffix = "" if name == "model" else f"_{name}"
            for part, key in (("all", ""), ("hidden", "_hidden")):
                curve = {n: round(row[name][part]["ll"], 4) for n, row in scores["completion"].items()}
                card[f"completion_{dataset}{suffix}{key}_ll"] = curve
    return card
