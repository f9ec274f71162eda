"""Exit statuses of ``bench`` and the error classes that choose them (torch-free).

    0   ok
    1   a regression (``bench compare``) or a verification mismatch (``bench verify-dp``, and the
        per-sample gradient check ``bench run`` makes before any local-DP training)
    2   bad input: a bad argument, scenario, dataset file, device, leaderboard or run folder;
        detected before any expensive work
    3   a failed empirical privacy audit (``bench run``: some row's lower bound exceeds its claim)
    4   the work itself failed (a federation that could not finish, a non-finite FID, a bug)
    130 interrupted (Ctrl-C); completed runs are kept

Every error message is one line (``bench: error: ...``). The rule the CLI applies: an exception
of this project's packages that is a ``ValueError`` is bad input (2), a :class:`VerificationError`
is a mismatch (1), anything else is a failure (4). Inside a run (``benchmark.runner.run_one``), after
the pre-flight checks, one of our ``ValueError``s is re-raised as a failed run (4): bad input is
what is refused before any expensive work.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_MISMATCH = 1
EXIT_BAD_INPUT = 2
EXIT_AUDIT_FAILED = 3
EXIT_FAILED = 4
EXIT_INTERRUPTED = 130

OUR_PACKAGES = ("benchmark", "privacy", "attacks")


class BadInputError(ValueError):
    """A command's arguments are wrong in a way argparse cannot see (checked before heavy imports)."""


class VerificationError(RuntimeError):
    """Per-sample gradients (or another checked computation) disagree with their reference."""


def is_ours(e: BaseException) -> bool:
    return type(e).__module__.split(".")[0] in OUR_PACKAGES


def exit_code(e: BaseException) -> int:
    """The exit status for an exception that reached the CLI."""
    if isinstance(e, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(e, VerificationError):
        return EXIT_MISMATCH
    if is_ours(e) and isinstance(e, ValueError):
        return EXIT_BAD_INPUT
    return EXIT_FAILED


def one_line(e: BaseException) -> str:
    """``e`` as the one line the CLI prints: our errors by message, others with their type."""
    text = str(e).strip()
    msg = text.splitlines()[0] if text else type(e).__name__
    return msg if is_ours(e) and text else f"{type(e).__name__}: {msg}"
