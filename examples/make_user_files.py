"""Make the files a new user brings, without crossdistill: a CSV and a Keras teacher trained elsewhere.

``my/digits.csv``: scikit-learn's 8x8 digits as 64 pixel columns ``p0..p63`` and a ``digit`` column of
words ("zero" ... "nine"); a quarter of the label cells are empty (rows the student's owner never
labelled). ``my/teacher.keras``: a Keras MLP that the teacher's owner trained on its own labelled
copy of the data, with its output names in ``my/teacher.keras.class_names.json`` in the owner's order
(zero, one, ..., nine), which is not the order crossdistill gives the CSV's classes (sorted words), so
the walk-through in README.md exercises the mapping by name.

    python examples/make_user_files.py --out my
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="my", help="folder to write digits.csv and teacher.keras into")
    parser.add_argument("--unlabeled", type=float, default=0.25, help="fraction of empty label cells")
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    from sklearn.datasets import load_digits

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    x, y = digits.data.astype("float32") / 16.0, digits.target
    rng = np.random.default_rng(0)
    hidden = rng.random(len(y)) < args.unlabeled
    with open(out / "digits.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*(f"p{i}" for i in range(64)), "digit"])
        for row, label, unlabeled in zip(x, y, hidden, strict=True):
            writer.writerow([*(f"{v:.4f}" for v in row), "" if unlabeled else WORDS[label]])

    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                                keras.layers.Dense(10)])
    teacher.compile(optimizer="adam", metrics=["accuracy"],
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x, y, epochs=30, batch_size=64, verbose=0)
    teacher.save(out / "teacher.keras")
    (out / "teacher.keras.class_names.json").write_text(json.dumps(WORDS))
    print(f"wrote {out / 'digits.csv'} ({len(y)} rows, {int(hidden.sum())} unlabeled) and "
          f"{out / 'teacher.keras'} (+ class_names.json)")


if __name__ == "__main__":
    main()
