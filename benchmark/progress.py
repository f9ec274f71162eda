"""What a run says while it runs: a line per round and a heartbeat (torch-free, so cheap to test).

:class:`Progress` wraps ``RunOptions.report`` for one run of :mod:`benchmark.runner`: the stage
lines, :func:`round_line` after every round, and ``still in <stage> (N s)`` from a small thread
whenever nothing was reported for :data:`HEARTBEAT_S` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from benchmark.scenarios import Scenario

# Within a stage, a "still in <stage>" line whenever no other line was reported for this long. 25 s,
# not 30: the thread wakes late on a loaded machine (a fresh-clone run at 30 s saw a 30.7 s gap), and
# the promise is a phase line at least every 30 s.
HEARTBEAT_S = 25.0


class Progress:
    """``RunOptions.report`` with a heartbeat: a small thread reports ``still in <stage> (N s)``
    whenever nothing was reported for ``every`` seconds, so the current phase of a long stage
    (FID on a CPU, the attacks) is never more than ``every`` seconds old in a log."""

    def __init__(self, report: Callable[[str], None] | None, prefix: str, every: float = HEARTBEAT_S):
        self.report, self.prefix, self.every = report, prefix, every
        self.t0 = self.last = self.stage_t0 = time.monotonic()
        self.stage = "start"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if report is not None:
            self._thread = threading.Thread(target=self._beat, name="bench-heartbeat", daemon=True)
            self._thread.start()

    def say(self, line: str) -> None:
        if self.report is None:
            return
        with self._lock:
            self.report(f"{self.prefix}: {line}")
            self.last = time.monotonic()

    def enter(self, stage: str, what: str) -> None:
        self.stage, self.stage_t0 = stage, time.monotonic()
        self.say(f"{stage} ({what}) [{self.stage_t0 - self.t0:.0f} s]")

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.every / 4)):
            now = time.monotonic()
            if now - self.last >= self.every:
                self.say(f"still in {self.stage} ({now - self.stage_t0:.0f} s)")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def round_line(scenario: Scenario, r: int, metrics: dict, elapsed_s: float) -> str:
    """One line per finished round, with what is public: under DP the epsilon spent so far (the
    server's own accounting, which the mechanism reports with the round's metrics), else the
    loss (a DP mechanism's clients do not report it)."""
    line = f"round {r}/{scenario.rounds} done ({elapsed_s:.0f} s)"
    if metrics.get("epsilon") is not None:
        line += f", epsilon so far {metrics['epsilon']:.3g} of {scenario.target_epsilon:g}"
    elif metrics.get("train_loss") is not None:
        line += f", loss {metrics['train_loss']:.4g}"
    dropped = sum(int(metrics.get(k, 0)) for k in ("dropped_error", "dropped_timeout", "rejected_invalid"))
    return line + (f", {dropped} update(s) dropped" if dropped else "")
