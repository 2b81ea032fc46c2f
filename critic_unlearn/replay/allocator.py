"""Keep multi-MB record buffers warm: glibc's malloc told not to mmap them fresh each time.

By default glibc serves an allocation above its (dynamic) mmap threshold with a fresh mmap and
hands it back to the kernel on free; the next 1.6 MB record (encode, send, receive, decode) then
touches fresh pages: ~400 minor page faults per MB, which on this project's machines cost more
than the codec and its checksum together. Raising the mmap threshold to glibc's maximum (32 MiB)
and the trim threshold (memory kept after frees) makes those buffers come from the heap and
stay there, so the same warm pages are reused record after record. The price is up to
`trim_threshold` of freed heap kept per process, small beside a diffusion model.

Process-wide and idempotent; `replay.keep_buffers: false` leaves the allocator as it is. A
no-op (returning False) where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 256 << 20

_applied: bool | None = None


def keep_large_buffers() -> bool:
    """Tune this process's glibc malloc as the module docstring says; True if it took effect."""
    global _applied
    if _applied is None:
        _applied = _mallopt()
    return _applied


def _mallopt() -> bool:
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; setting either one also turns off the dynamic threshold
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
