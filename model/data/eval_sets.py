"""Fixed evaluation sets, generated once from a fixed seed and cached on disk as .npz.

* ``protocol_set``: the paper protocol (N ~ U{3..46}, M ~ U{3..49-N}), 3000 batches x 16 tasks.
* ``streaming_set``: for one context size N, tasks with a fixed number of targets.
* ``joint_set``: the protocol's context sizes with many targets, at random inputs or on a sorted
  grid (for the joint model: several autoregressive blocks, sample paths).
Cache files are keyed by every parameter that changes their content, plus a generator version.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from model.data.broad import BroadBatch, BroadPrior
from model.data.gp import KERNELS, GPBatch, GPSampler, Kernel

GENERATOR_VERSION = 1
DEFAULT_CACHE = Path(os.environ.get("CMANP_DATA_CACHE", "var/eval-sets"))
PROTOCOL_SEED = 1000  # plus the kernel's index, so each kernel has its own stream
STREAMING_SEED = 3000  # plus N


def _save(path: Path, batches: list[GPBatch]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for i, b in enumerate(batches):
        for name in _FIELDS:
            arrays[f"{i}/{name}"] = getattr(b, name).numpy()
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, count=np.array(len(batches)), **arrays)
    os.replace(tmp, path)


_FIELDS = ("xc", "yc", "xt", "yt", "length", "scale", "period")


def _load(path: Path, kernel: Kernel) -> list[GPBatch]:
    with np.load(path) as f:
        return [
            GPBatch(**{k: torch.from_numpy(f[f"{i}/{k}"]) for k in _FIELDS}, kernel=kernel)
            for i in range(int(f["count"]))
        ]


def _cached(path: Path, kernel: Kernel, make: callable) -> list[GPBatch]:  # type: ignore[valid-type]
    if path.exists():
        return _load(path, kernel)
    batches = make()
    _save(path, batches)
    return batches


def protocol_set(
    kernel: Kernel, num_batches: int = 3000, batch_size: int = 16, cache_dir: Path = DEFAULT_CACHE
) -> list[GPBatch]:
    """The paper's evaluation set for one kernel."""
    seed = PROTOCOL_SEED + KERNELS.index(kernel)
    path = cache_dir / f"protocol-{kernel}-{num_batches}x{batch_size}-seed{seed}-v{GENERATOR_VERSION}.npz"

    def make() -> list[GPBatch]:
        g = torch.Generator().manual_seed(seed)
        sampler = GPSampler(kernel)
        return [sampler.sample_protocol(batch_size, g) for _ in range(num_batches)]

    return _cached(path, kernel, make)


def streaming_set(
    num_context: int,
    num_tasks: int = 64,
    num_targets: int = 50,
    kernel: Kernel = "rbf",
    batch_size: int = 16,
    cache_dir: Path = DEFAULT_CACHE,
) -> list[GPBatch]:
    """Tasks with exactly ``num_context`` context points, for the streaming curve."""
    seed = STREAMING_SEED + num_context + 100_000 * KERNELS.index(kernel)
    name = f"streaming-{kernel}-n{num_context}-{num_tasks}t{num_targets}-b{batch_size}-seed{seed}-v{GENERATOR_VERSION}"

    def make() -> list[GPBatch]:
        g = torch.Generator().manual_seed(seed)
        sampler = GPSampler(kernel)
        sizes = [min(batch_size, num_tasks - i) for i in range(0, num_tasks, batch_size)]
        return [sampler.sample(b, num_context, num_targets, g) for b in sizes]

    return _cached(cache_dir / f"{name}.npz", kernel, make)


JOINT_SEED = 4000  # plus the kernel's index, plus 10 for grid targets


def joint_set(
    kernel: Kernel,
    num_batches: int,
    batch_size: int = 16,
    num_targets: int = 200,
    grid: bool = False,
    cache_dir: Path = DEFAULT_CACHE,
) -> list[GPBatch]:
    """Tasks with the protocol's contexts (N ~ U{3..46} per batch) and ``num_targets`` targets each.

    The targets are drawn like the context (uniform on the x range, in random order) or, with
    ``grid``, are the same sorted grid spanning the x range in every task: what a user asks for
    when drawing sample paths, and where increments between neighbouring points mean something."""
    seed = JOINT_SEED + KERNELS.index(kernel) + (10 if grid else 0)
    kind = "grid" if grid else "random"
    name = f"joint-{kernel}-{num_batches}x{batch_size}-t{num_targets}-{kind}-seed{seed}-v{GENERATOR_VERSION}"

    def make() -> list[GPBatch]:
        g = torch.Generator().manual_seed(seed)
        sampler = GPSampler(kernel)
        batches = []
        for _ in range(num_batches):
            nc = int(torch.randint(3, 47, (1,), generator=g))
            if not grid:
                batches.append(sampler.sample(batch_size, nc, num_targets, g))
                continue
            lo, hi = sampler.x_range
            xc = lo + (hi - lo) * torch.rand((batch_size, nc, 1), generator=g, dtype=torch.float64)
            xt = torch.linspace(lo, hi, num_targets, dtype=torch.float64).view(1, -1, 1)
            batches.append(sampler.sample_at(torch.cat([xc, xt.expand(batch_size, -1, -1)], 1), nc, g))
        return batches

    return _cached(cache_dir / f"{name}.npz", kernel, make)


BROAD_SEED = 5000  # plus N


def broad_streaming_set(
    num_context: int, num_tasks: int = 64, num_targets: int = 50, batch_size: int = 16
) -> list[BroadBatch]:
    """Tasks from the broad prior with exactly ``num_context`` context points, from a fixed seed.

    Generated on the fly (a few seconds): each batch keeps its tasks' kernel parameters, so the
    exact GP with the true kernel scores the same tasks. Distinct from the training streams, which
    use other seeds."""
    g = torch.Generator().manual_seed(BROAD_SEED + num_context)
    prior = BroadPrior()
    sizes = [min(batch_size, num_tasks - i) for i in range(0, num_tasks, batch_size)]
    return [prior.sample(b, num_context, num_targets, g) for b in sizes]
