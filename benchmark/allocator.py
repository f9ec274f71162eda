"""Keep freed memory in the process instead of handing it back to the kernel: one policy, set once.

glibc's malloc serves a large request (above ``M_MMAP_THRESHOLD``, at most 32 MiB on 64-bit
Linux) with a fresh ``mmap`` and gives it back with ``munmap`` when torch frees the tensor. The
next tensor of that size is a fresh mapping again, and the kernel zero-fills every page of it on
first touch. A CPU forward pass of the FID Inception network at 299 px allocates and frees
hundreds of MiB per layer, so scoring 200 images faulted in about 28 GiB of zeroed pages: 7.1
million page faults and 13 s of kernel time in a 24 s stage on the 2-core build machine
(2026-12-07). The same pass with freed memory kept in the heap (``M_MMAP_MAX = 0``: no request is
served by ``mmap``; ``M_TRIM_THRESHOLD`` raised: free memory at the top of the heap is not
returned) took 17 s, with 2 s of kernel time, and gave bit-identical features: the allocator
decides where a tensor lives, never what is computed in it.

:func:`keep_freed_memory` sets it for this process (``mallopt`` through ctypes); ``bench`` calls it
once, before any command loads torch. Only the main process: it is where the large tensors are
(sampling, FID, the downstream classifier, the attacks). A simulated client's small UNet at 8x8 faults
as often with the policy as without (about 193,000 page faults over three local rounds either way,
measured in two concurrent processes as Ray's actors run), so Ray's processes keep glibc's
defaults. The price is resident memory: the process keeps its high-water mark until it exits (the
privacy suite's main process peaked at 3.5 GiB with it, 2.9 GiB without). Not glibc (macOS, musl):
nothing is changed. A user's own ``MALLOC_MMAP_MAX_``, ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` (which glibc read at start-up) stand; ``FEDDP_KEEP_FREED_MEMORY=0``
turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1   # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # free memory above this at the heap's top is returned to the kernel
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Set the policy for this process; True where glibc took it."""
    if os.environ.get("FEDDP_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if any(k in os.environ for k in USER_SETTINGS):  # the user's own malloc settings stand
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
