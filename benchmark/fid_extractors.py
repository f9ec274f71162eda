"""FID feature extractors by name: the one registry of a scenario's ``fid_impl`` and ``bench fid --impl``.

Each entry says what a row records as its ``fid_impl`` (package, version, network and resize: FID
values of different extractors are never compared), how to check that its network is installed
before any training, and how to compute its features. Torch-free: scenario validation and the
CLI's choices read it without importing torch; an extractor's network code
(:mod:`benchmark.inception`) is imported only when it is checked or used.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass


@functools.cache
def _version(dist: str) -> str:
    return importlib.metadata.version(dist)


@dataclass(frozen=True)
class FIDExtractor:
    name: str
    summary: str                      # one line, for --help
    dist: str                         # the package whose code computes the features
    pipeline: str                     # network and resize, as recorded after the package's version
    check: Callable[[], None]         # raises inception.FIDUnavailableError if the network is absent
    features: Callable[..., object]   # (uint8 NCHW images, *, device, batch_size, progress, cache_dir)
                                      # -> float64 (N, 2048) pool3 features

    @property
    def impl(self) -> str:
        """What every row's ``fid_impl`` records."""
        return f"{self.dist}-{_version(self.dist)}:{self.pipeline}"


def _check_clean() -> None:
    from benchmark.inception import ensure_inception_file

    ensure_inception_file()


def _clean_features(images, **kw):
    from benchmark.inception import clean_features

    return clean_features(images, **kw)


def _check_pytorch_fid() -> None:
    from benchmark.inception import pytorch_fid_extractor

    pytorch_fid_extractor("cpu")


def _pytorch_fid_features(images, **kw):
    from benchmark.inception import pytorch_fid_features

    return pytorch_fid_features(images, **kw)


EXTRACTORS: dict[str, FIDExtractor] = {e.name: e for e in (
    FIDExtractor("clean", "the offline clean-fid network (default)", "clean-fid",
                 "clean:inception-2015-12-05(torchscript):pil-bicubic-299", _check_clean, _clean_features),
    # pytorch-fid's own port of the same TF graph, only where the user has its weights file.
    FIDExtractor("pytorch-fid", "pytorch-fid's network (needs its weights in the torch hub cache)", "pytorch-fid",
                 "inception-2015-12-05(pt_inception-6726825d):torch-bilinear-299", _check_pytorch_fid,
                 _pytorch_fid_features),
)}


def extractor_names() -> tuple[str, ...]:
    return tuple(EXTRACTORS)


def get_extractor(name: str) -> FIDExtractor:
    try:
        return EXTRACTORS[name]
    except KeyError:
        raise ValueError(f"unknown FID extractor {name!r} (known: {', '.join(EXTRACTORS)})") from None
