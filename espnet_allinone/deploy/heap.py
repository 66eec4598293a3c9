"""Give the C heap's free memory back to the system once a session is built.

Building an onnxruntime session frees a lot at its end (the numpy expansion of
bit-packed weights, onnxruntime's own copies of them once prepacked, a parsed
float file's protobuf). glibc's malloc keeps such free chunks inside its heap
(and raises its mmap threshold after a large free, so later large blocks come
from the heap too), so the process stays as large as its start-up peak.
``malloc_trim(0)`` returns them: measured on a 12-block d=256 model
(docs/experiments/inference.md) the resident memory after the build fell by
50 MB for the float file and by 30-70 MB for 2-bit ones, and the first
utterance then grows from the smaller heap (the float model's peak: 253 -> 213 MB).
ctypes only; a no-op where there is no glibc (musl, macOS, Windows).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError:
        return None


def release_free_memory() -> bool:
    """Return the C heap's free memory to the system; True if anything was released."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
