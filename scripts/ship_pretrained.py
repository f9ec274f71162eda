"""Write, or check, the public pretraining checkpoints that ship inside the package.

Every registered suite's scenarios at the ``cpu`` scale that start from a public pretraining name a
definition (:func:`benchmark.pretrain.definition`); each distinct one is trained with
:func:`benchmark.pretrain.train_public`, exactly as ``bench run`` trains it on a machine without the
checkpoint, and written to ``benchmark/pretrained/`` with its record (definition, SHA-256, torch
version and threads).

    python scripts/ship_pretrained.py            # (re)write every shipped checkpoint
    python scripts/ship_pretrained.py --check    # retrain each with its recorded threads; exit 1
                                                 # unless every one equals the shipped file bit for bit
    python scripts/ship_pretrained.py --check --only privacy   # one suite's definitions

The CPU kernels' sums depend on the thread count, so ``--check`` trains with the threads the record
names (the shipped files were trained with 2, this project's build machines' cores).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from benchmark.data import scenario_dataset
from benchmark.pretrain import SHIPPED_DIR, checkpoint_path, definition, public_data, record, train_public
from benchmark.rundir import write_json, write_torch
from benchmark.suites import get_suite, suite_names
from benchmark.threads import set_fixed_threads

import shipping  # scripts/shipping.py: the command line both shipping scripts share


def definitions(only: str | None = None) -> list[tuple[dict, object, object]]:
    """(definition, a scenario that uses it, its public data) for each distinct definition."""
    out, seen = [], set()
    for name in suite_names() if only is None else [only]:
        for s in get_suite(name, "cpu"):
            if not s.pretrain:
                continue
            private = scenario_dataset(s, "train")
            shape, classes = tuple(private.images.shape[1:]), private.num_classes
            defn = definition(s, shape, classes)
            key = checkpoint_path(defn).name
            if key not in seen:
                seen.add(key)
                out.append((defn, s, public_data(s, shape, classes)))
    return out


def equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check(defn: dict, scenario, public) -> bool:
    """Retrain ``defn`` with its shipped record's threads; True iff it equals the shipped file."""
    shipped = SHIPPED_DIR / checkpoint_path(defn).name
    if not shipped.exists():
        print(f"missing: {shipped.name}")
        return False
    rec = json.loads(shipped.with_suffix(".json").read_text())
    set_fixed_threads(rec["torch_threads"])
    t0 = time.perf_counter()
    state, _ = train_public(scenario, public)
    same = equal_states(state, torch.load(shipped, map_location="cpu", weights_only=True))
    print(f"{'same' if same else 'DIFFERENT'}: {shipped.name} retrained in {time.perf_counter() - t0:.0f} s "
          f"with {rec['torch_threads']} threads (shipped with torch {rec['torch']}, here {torch.__version__})")
    return same


def write(defn: dict, scenario, public, threads: int) -> None:
    set_fixed_threads(threads)
    path = SHIPPED_DIR / checkpoint_path(defn).name
    t0 = time.perf_counter()
    state, loss = train_public(scenario, public)
    train_s = time.perf_counter() - t0
    SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    write_torch(path, state)
    write_json(path.with_suffix(".json"), record(defn, path, loss=loss, train_s=train_s, n_images=len(public.labels)))
    print(f"wrote {path} ({train_s:.0f} s, last epoch's loss {loss:.4f})")


def main(argv: list[str] | None = None) -> int:
    return shipping.main(argv, doc=__doc__, items=definitions, check=check, write=write, only_default=None,
                         what="checkpoints")


if __name__ == "__main__":
    sys.exit(main())
