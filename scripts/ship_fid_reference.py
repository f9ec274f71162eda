"""Write, or check, the FID reference features that ship inside the package.

For a registered suite's scenarios at the ``cpu`` scale (default: ``privacy``, README command 1's),
each distinct FID reference (``benchmark.fid.fid_reference``: the test split's fixed sample) and
floor set (``benchmark.fid.floor_images``: the training images of the floor) is scored by the
scenario's extractor, exactly as ``bench run`` scores it on a machine without the cache, and
written to ``benchmark/fid_reference/`` (``benchmark.fid``, "Shipped references"): the float32
features, their key and extractor, the SHA-256 of the images and of the features, the torch
version and threads.

    python scripts/ship_fid_reference.py            # (re)write the privacy suite's references
    python scripts/ship_fid_reference.py --check    # score again with the recorded threads; exit 1
                                                    # unless every one equals the shipped file bit for bit
    python scripts/ship_fid_reference.py --only cross-device

The CPU kernels' sums depend on the thread count, so ``--check`` scores with the threads the file
records (the shipped files were scored with 2, this project's build machines' cores).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from benchmark.data import scenario_dataset
from benchmark.fid import (SHIPPED_REFERENCE_DIR, features_sha256, fid_reference, floor_images, images_sha256,
                           inception_features, shipped_reference_path)
from benchmark.fid_extractors import get_extractor
from benchmark.rundir import write_npz
from benchmark.suites import get_suite
from benchmark.threads import set_fixed_threads

import shipping  # scripts/shipping.py: the command line both shipping scripts share


def reference_sets(suite: str) -> list[tuple[str, str, str, np.ndarray]]:
    """(key, extractor name, extractor impl, images) of each distinct reference and floor set."""
    out, seen = [], set()
    for s in get_suite(suite, "cpu"):
        test = scenario_dataset(s, "test")
        sets = [fid_reference(test, s.fid_n_samples)]
        train = scenario_dataset(s, "train")
        if s.fid_n_samples <= len(train.labels):  # the runner scores a floor only then
            sets.append(floor_images(train, s.fid_n_samples))
        impl = get_extractor(s.fid_impl).impl
        for images, key in sets:
            if (key, impl) not in seen:
                seen.add((key, impl))
                out.append((key, s.fid_impl, impl, images))
    return out


def features(images: np.ndarray, extractor: str) -> np.ndarray:
    return inception_features(images, extractor=extractor).astype(np.float32)  # lossless: the network's dtype


def check(key: str, extractor: str, impl: str, images: np.ndarray) -> bool:
    path = shipped_reference_path(key, impl)
    if not path.exists():
        print(f"missing: {path.name}")
        return False
    with np.load(path, allow_pickle=False) as z:
        shipped, threads, version = z["feats"], int(z["torch_threads"]), str(z["torch"])
        same_images = str(z["images_sha256"]) == images_sha256(images)
    set_fixed_threads(threads)
    t0 = time.perf_counter()
    same = same_images and np.array_equal(features(images, extractor), shipped)
    print(f"{'same' if same else 'DIFFERENT'}: {path.name} scored in {time.perf_counter() - t0:.0f} s with {threads} "
          f"threads (shipped with torch {version}, here {torch.__version__}){'' if same_images else '; other images'}")
    return same


def write(key: str, extractor: str, impl: str, images: np.ndarray, threads: int) -> None:
    set_fixed_threads(threads)
    t0 = time.perf_counter()
    feats = features(images, extractor)
    path = shipped_reference_path(key, impl)
    SHIPPED_REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
    write_npz(path, feats=feats, key=np.array(key), fid_impl=np.array(impl), images_sha256=np.array(images_sha256(images)),
              feats_sha256=np.array(features_sha256(feats)),
              torch=np.array(torch.__version__), torch_threads=np.array(threads))
    print(f"wrote {path} ({len(images)} images, {time.perf_counter() - t0:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    return shipping.main(argv, doc=__doc__, items=reference_sets, check=check, write=write,
                         only_default="privacy", what="references")


if __name__ == "__main__":
    sys.exit(main())
