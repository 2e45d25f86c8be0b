"""Big buffers go back to the operating system when they are freed. glibc's malloc gives an allocation
above its mmap threshold a mapping of its own, unmapped on free; but each time such a block is freed
it raises the threshold to that block's size (up to 32 MB), so from the first big request on, request
bodies, their base64 and decoded uploads (up to 32 MB each) come from the heaps of the worker threads
that parse them, and stay there as free memory the process keeps. Under a mix of valid requests and
bombs the ingress's memory grew that way (issue 25: 626 MB to 1.57 GB over an hour). With the
threshold fixed at 1 MB (as MALLOC_MMAP_THRESHOLD_ would fix it), `benchmarks/soak.py` for 3 minutes
on the tiny graph: the ingress from 344 MB to 415 MB (peak 427), against 630 MB (peak 742) before;
the same mix on the ingress's app alone (stub models) for 150 s: 554 MB against 907 MB, of which
350 MB lay free in malloc's heaps."""

import ctypes
import platform

M_MMAP_THRESHOLD = -3  # mallopt's parameter (glibc's malloc.h)
MMAP_THRESHOLD_BYTES = 1024 * 1024  # what a valid request's small objects never reach


def return_big_buffers(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fixes this process's mmap threshold at `threshold` bytes, so that every larger allocation is
    unmapped when freed. True where it took (glibc); elsewhere nothing changes."""
    if platform.libc_ver()[0] != "glibc":
        return False
    return ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, threshold) == 1
