"""The placer's inner loops are compiled with numba: a decision visits each distinct feasible
worker and each of its GPUs once, which as numpy array calls cost ~3 times as long.

Machine code is compiled on first use (about 10 s for all of them) and cached on disk: beside
the source when that is writable, else under ``NUMBA_CACHE_DIR`` (the chart points it at the
operator's writable temporary directory). Where neither is writable, each process compiles
again instead of failing.

numba keys a function's cache by its own source file only, so a compiled function calls only
compiled functions of its own module (another module's would stay stale in the cache after
an edit there), and reads only constants of its module or fixed units (``SHARE_SCALE``).

Compiling leaves LLVM's working memory in the process (about 60 MB more resident than loading
the same machine code from the cache), so a long-lived process compiles in a child that fills
the cache and then loads from it (``disk_cached`` says whether that can work).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
from numba.core.caching import NullCache


def compiled(function: Callable[..., Any]) -> Any:
    """`function` compiled by numba (nopython), cached on disk where possible."""
    try:
        return numba.njit(cache=True)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(function)


def disk_cached(function: Any) -> bool:
    """Whether ``function`` (from `compiled`) loads its machine code from a disk cache, which
    another process can fill."""
    return not isinstance(function._cache, NullCache)
