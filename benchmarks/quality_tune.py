"""Choose the quality suite's student recipe on a validation split held out from the training images.

Run ``python -m benchmarks.quality_tune`` from the repository root. The test split is never read here:
``val`` images are drawn from the 60,000 training images, students train on the rest (50,000), and both
the hard-label baseline and the distilled student get the same search over training recipes (epochs,
lr schedule, lr, weight decay), so neither is compared at the other's best settings. Stages, each chosen
automatically by validation accuracy:

1. every recipe in ``RECIPES`` for a hard-label student and a distilled student (T=2, hard weight 0.3)
2. the distilled student's best recipe over T in ``TEMPERATURES`` and hard weight in ``HARD_WEIGHTS``
3. the best hard-label and the best distilled setting on two more seeds (paired gain on val)

The teacher is the suite's cached CNN (trained on all 60,000 training images, validation images
included, so its soft targets are, if anything, slightly better on val than on test). Results go to
``<results>.json`` / ``.md`` (default ``benchmarks/results/quality-tune``); finished runs are cached in
the json, so a rerun only trains what is missing.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from crossdistill import storage

RECIPES: dict[str, dict[str, Any]] = {
    "e10-cos-1e-3": {"epochs": 10, "schedule": "cosine", "lr": 1e-3, "weight_decay": 0.0},  # the v1 suite
    "e30-cos-1e-3": {"epochs": 30, "schedule": "cosine", "lr": 1e-3, "weight_decay": 0.0},
    "e30-cos-1e-3-wd1e-4": {"epochs": 30, "schedule": "cosine", "lr": 1e-3, "weight_decay": 1e-4},
    "e30-1cyc-3e-3": {"epochs": 30, "schedule": "onecycle", "lr": 3e-3, "weight_decay": 0.0},
    "e40-1cyc-3e-3-wd1e-4": {"epochs": 40, "schedule": "onecycle", "lr": 3e-3, "weight_decay": 1e-4},
}
STAGE1_KD = {"temperature": 2.0, "hard_weight": 0.3}
TEMPERATURES = (1.0, 2.0, 3.0)
HARD_WEIGHTS = (0.1, 0.3, 0.5)
CONFIRM_SEEDS = (1, 2)


def run_key(mode: str, recipe: str, seed: int, temperature: float = 0.0, hard_weight: float = 0.0) -> str:
    """Name of one tuning run (also its cache key)."""
    base = f"{mode}-{recipe}-s{seed}"
    return base if mode == "hard" else f"{base}-T{temperature:g}-hw{hard_weight:g}"


def _worker_init(work: str, threads: int, val_size: int, val_seed: int) -> None:
    global _SUITE, _VAL, _TRAIN_URI, _SOFT
    from benchmarks.quality import QualityConfig, Suite

    _SUITE = Suite(QualityConfig(work=work, threads=threads), log=lambda _: None)
    idx = np.random.default_rng(val_seed).permutation(len(_SUITE.train))
    val_idx, fit_idx = np.sort(idx[:val_size]), np.sort(idx[val_size:])
    _VAL = _SUITE.train.take(val_idx)
    _TRAIN_URI = _SUITE.subset_uri(f"tune-fit-{val_seed}", _SUITE.train.take(fit_idx))
    _SOFT = _SUITE.soft_labels()  # the cached dense logits of the clean training images


def _train(spec: dict[str, Any]) -> dict[str, Any]:
    kd = spec["mode"] == "offline"
    r = _SUITE.student("tune-" + spec["key"], _TRAIN_URI, spec["mode"], soft=_SOFT if kd else None,
                       temperature=spec.get("temperature"), hard_weight=spec.get("hard_weight"), seed=spec["seed"],
                       recipe=RECIPES[spec["recipe"]], eval_on=_VAL)
    return {**spec, "val_accuracy": r["accuracy"], "val_errors": r["errors"], "seconds": r["seconds"],
            "val_size": len(_VAL)}


class Tuner:
    """Runs specs in a small process pool, caching each finished run in the results json."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        path = Path(args.results + ".json")
        self.state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"runs": {}}
        self.state.update({"val_size": args.val_size, "val_seed": args.val_seed, "recipes": RECIPES,
                           "command": "python -m benchmarks.quality_tune " + " ".join(args.argv)})
        _worker_init(args.work, args.threads, args.val_size, args.val_seed)  # writes the split once, before the pool
        self.pool = ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=_worker_init,
                                        initargs=(args.work, args.threads, args.val_size, args.val_seed))

    def run(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        todo = [s for s in specs if s["key"] not in self.state["runs"]]
        for res in self.pool.map(_train, todo):
            self.state["runs"][res["key"]] = res
            print(f"  {res['key']}: val {100 * res['val_accuracy']:.2f}% ({res['seconds']} s)", flush=True)
            self.save()
        return [self.state["runs"][s["key"]] for s in specs]

    def save(self) -> None:
        storage.write_text(self.args.results + ".json", json.dumps(self.state, indent=1))
        storage.write_text(self.args.results + ".md", render(self.state))


def spec(mode: str, recipe: str, seed: int = 0, temperature: float | None = None,
         hard_weight: float | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {"mode": mode, "recipe": recipe, "seed": seed}
    if mode == "offline":
        s.update(temperature=temperature, hard_weight=hard_weight)
        s["key"] = run_key(mode, recipe, seed, temperature, hard_weight)
    else:
        s["key"] = run_key(mode, recipe, seed)
    return s


def tune(t: Tuner) -> dict[str, Any]:
    """The three stages; returns the chosen settings (also stored in the results)."""
    best = lambda runs: max(runs, key=lambda r: r["val_accuracy"])  # noqa: E731 - first wins ties
    stage1 = t.run([spec(m, name, 0, **(STAGE1_KD if m == "offline" else {}))
                    for name in RECIPES for m in ("hard", "offline")])
    hard_best = best([r for r in stage1 if r["mode"] == "hard"])
    kd_recipe = best([r for r in stage1 if r["mode"] == "offline"])["recipe"]
    stage2 = t.run([spec("offline", kd_recipe, 0, temp, hw) for temp in TEMPERATURES for hw in HARD_WEIGHTS])
    kd_best = best(stage2)
    seeds = (0, *CONFIRM_SEEDS)
    hard_runs = t.run([spec("hard", hard_best["recipe"], s) for s in seeds])
    kd_runs = t.run([spec("offline", kd_best["recipe"], s, kd_best["temperature"], kd_best["hard_weight"])
                     for s in seeds])
    gains = [k["val_accuracy"] - h["val_accuracy"] for k, h in zip(kd_runs, hard_runs, strict=True)]
    t.state["chosen"] = {"hard": {"recipe": hard_best["recipe"], **RECIPES[hard_best["recipe"]]},
                         "distilled": {"recipe": kd_best["recipe"], **RECIPES[kd_best["recipe"]],
                                       "temperature": kd_best["temperature"], "hard_weight": kd_best["hard_weight"]},
                         "confirm": {"seeds": list(seeds), "hard": [r["val_accuracy"] for r in hard_runs],
                                     "distilled": [r["val_accuracy"] for r in kd_runs], "gains": gains}}
    t.save()
    return t.state["chosen"]


def render(state: dict[str, Any]) -> str:
    """Markdown of every run so far, grouped by stage, and the chosen settings."""
    runs = state["runs"]
    out = ["# Recipe search on a validation split (quality suite)", "", f"Command: `{state.get('command', '')}`", "",
           f"Validation: {state['val_size']} of the 60,000 training images (seed {state['val_seed']}); students "
           f"train on the rest. The test split is not read.", "",
           "| run | mode | recipe | T | hard weight | seed | val errors | val accuracy % |", "|---|---|---|---|---|---|---|---|"]
    for key, r in runs.items():
        out.append(f"| {key} | {r['mode']} | {r['recipe']} | {r.get('temperature') or ''} | "
                   f"{'' if r.get('hard_weight') is None else r['hard_weight']} | {r['seed']} | {r['val_errors']} | "
                   f"{100 * r['val_accuracy']:.2f} |")
    out += ["", "Recipes:", ""] + [f"- `{k}`: {json.dumps(v)}" for k, v in state["recipes"].items()]
    if "chosen" in state:
        c = state["chosen"]
        g = np.asarray(c["confirm"]["gains"]) * 100
        out += ["", "Chosen:", "", f"- hard labels: {json.dumps(c['hard'])}", f"- distilled: {json.dumps(c['distilled'])}",
                f"- val accuracy over seeds {c['confirm']['seeds']}: hard "
                f"{' / '.join(f'{100 * a:.2f}' for a in c['confirm']['hard'])}, distilled "
                f"{' / '.join(f'{100 * a:.2f}' for a in c['confirm']['distilled'])}; paired gain "
                f"{g.mean():+.2f} ± {g.std(ddof=1):.2f} pt"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    import sys

    p = argparse.ArgumentParser(prog="python -m benchmarks.quality_tune", description=__doc__.split("\n")[0])
    p.add_argument("--work", default="runs/bench-quality", help="the suite's cache (teacher, soft labels)")
    p.add_argument("--results", default="benchmarks/results/quality-tune")
    p.add_argument("--val-size", type=int, default=10000)
    p.add_argument("--val-seed", type=int, default=7)
    p.add_argument("--workers", type=int, default=2, help="students trained at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    start = time.perf_counter()
    t = Tuner(args)
    try:
        chosen = tune(t)
    finally:
        t.pool.shutdown()
    print(render(t.state))
    print(f"chosen: {json.dumps(chosen)}; {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
