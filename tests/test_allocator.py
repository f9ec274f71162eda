"""benchmark.allocator: freed memory stays in the process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmark import allocator

# A child that allocates and frees a 64 MiB buffer twice: the second allocation's page faults tell
# whether the first one's pages came back from the kernel zero-filled (mmap) or from the heap.
CHILD = """
import ctypes, resource, sys
from benchmark.allocator import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "policy" else None)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def touch():
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)
    libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _child(arg: str, **env) -> tuple[str, int]:
    base = {k: v for k, v in os.environ.items() if k not in (*allocator.USER_SETTINGS, "FEDDP_KEEP_FREED_MEMORY")}
    out = subprocess.run([sys.executable, "-c", CHILD, arg], env=base | env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    took, kept = _child("policy")
    _, faulted = _child("none")
    assert took == "True"
    assert faulted > 10_000 > 1_000 > kept, (faulted, kept)  # 64 MiB is 16,384 pages


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_users_own_malloc_settings_or_the_switch_turn_it_off():
    assert _child("policy", FEDDP_KEEP_FREED_MEMORY="0")[0] == "False"
    took, faults = _child("policy", MALLOC_TRIM_THRESHOLD_="131072")
    assert took == "False" and faults > 10_000  # glibc's defaults, and the user's trim threshold


def test_bench_sets_it_once_before_any_command(monkeypatch):
    from benchmark import cli

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["list"]) == 0
    assert calls == [1]
