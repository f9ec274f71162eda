"""The terminal of ``bench run`` shows the tool, not its libraries.

Flower, Ray, Opacus, diffusers and torch print warnings that carry nothing for the user of a
benchmark (a deprecated entry point we call on purpose, a skipped federated evaluation, an RDP
order at the edge of its range, ...): dozens per suite, breaking the tool's own lines. Inside
:func:`hush` (entered by ``bench run`` around its work):

* a Python warning raised by library code is hidden and counted; one that says something the user
  should know (:data:`MATTERS`, e.g. how DP noise is seeded) becomes our own one-line message,
  printed once; a warning raised by this project's own code is shown as usual;
* log records below ERROR from the libraries' loggers (Flower, diffusers, Ray, and the root
  logger Opacus configures) are hidden and counted, except those logged from this project's code
  (the server's screening of client replies);
* Ray does not forward its actors' (the simulated clients') stdout and stderr to the terminal
  (:func:`ray_init_args`); a client's failure still reaches the server as an error reply and is
  reported by the screening.

``BENCH_VERBOSE=1`` turns all of it off. :func:`hidden` is the count for the closing line.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Warnings that matter: pattern -> the line we print instead (once per process).
MATTERS: dict[str, str] = {
    r"Secure RNG turned off": "DP noise: seeded from OS entropy (see README 'Determinism')",
}

# Library loggers whose records below ERROR are noise for a benchmark's user ("" is the root
# logger, which Opacus configures with logging.basicConfig; Flower's records also propagate there).
LOGGERS = ("flwr", "diffusers", "ray", "")

_hidden = 0
_said: set[str] = set()


def verbose() -> bool:
    return os.environ.get("BENCH_VERBOSE", "").strip() not in ("", "0")


def hidden() -> int:
    """How many library warnings and log records were hidden so far in this process."""
    return _hidden


def ours(path: str | None) -> bool:
    """Whether a source file is this project's own (not a library, not the virtual environment)."""
    if not path:
        return False
    p = Path(path).resolve()
    return p.is_relative_to(ROOT) and not any(part.startswith(".venv") or part.endswith("-packages")
                                               for part in p.relative_to(ROOT).parts)


def classify_warning(message: str, filename: str | None) -> str | None:
    """What :func:`hush` does with a warning: our own line for it (a :data:`MATTERS` one),
    ``""`` to hide it, ``None`` to show it as Python would."""
    for pattern, line in MATTERS.items():
        if re.search(pattern, message):
            return line
    return None if ours(filename) else ""


class _Drop(logging.Filter):
    """Hide (and count) library records below ERROR; ours and errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        global _hidden
        if record.levelno >= logging.ERROR or ours(record.pathname):
            return True
        if not getattr(record, "_bench_hidden", False):  # one record may meet several handlers
            record._bench_hidden = True
            _hidden += 1
        return False


@contextmanager
def hush(say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hide library warnings and log noise while the block runs (see the module docstring).
    ``say`` prints one of our own lines (default: ``bench: ...`` on stderr)."""
    if verbose():
        yield
        return
    say = say or (lambda line: print(f"bench: {line}", file=sys.stderr, flush=True))

    def showwarning(message, category, filename, lineno, file=None, line=None):
        global _hidden
        what = classify_warning(str(message), filename)
        if what is None:
            return original(message, category, filename, lineno, file, line)
        _hidden += 1
        if what and what not in _said:
            _said.add(what)
            say(what)

    with warnings.catch_warnings():
        original = warnings.showwarning
        warnings.showwarning = showwarning
        _load_library_loggers()  # importing Flower warns too (click's deprecations)
        with _filtered_loggers():
            yield


@contextmanager
def _filtered_loggers() -> Iterator[None]:
    """Library log records below ERROR hidden and counted while the block runs."""
    drop = _Drop()
    root = logging.getLogger()
    own_root = None
    if not root.handlers:  # what basicConfig would add, filtered; Opacus' basicConfig is then a no-op
        own_root = logging.StreamHandler(sys.stderr)
        own_root.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(own_root)
    flwr = logging.getLogger("flwr")
    flwr_propagate, flwr.propagate = flwr.propagate, False  # Flower prints its own; not twice
    handlers = [h for name in LOGGERS for h in logging.getLogger(name).handlers]
    for h in handlers:
        h.addFilter(drop)
    flwr.addFilter(drop)  # Flower logs on this logger itself: its records meet the filter here too
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(drop)
        flwr.removeFilter(drop)
        flwr.propagate = flwr_propagate
        if own_root is not None:
            root.removeHandler(own_root)


def _load_library_loggers() -> None:
    """Create the libraries' handlers now (what importing them does), so that the filter sits on
    them even when the block imports the libraries itself (as ``bench run`` does)."""
    try:
        import flwr.common.logger  # noqa: F401  (Flower's console handler)
    except ImportError:
        pass
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.get_verbosity()  # configures the "diffusers" logger's handler
    except ImportError:
        pass


def ray_init_args() -> dict:
    """``ray.init`` arguments for the simulation: the actors' output stays out of the terminal."""
    return {} if verbose() else {"log_to_driver": False}
