"""Bulk work without Python's cyclic garbage collector running in the middle of it."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block; the collector's previous state comes
    back after it (cycles made meanwhile are collected by its next run, as usual). The
    collector is per process: in a server, a bulk stage pauses it for the other threads too,
    for as long as the stage lasts; overlapping blocks leave it as it was before the first.

    For bulk work — a batch of claims verified, a file of claims or ledger rows imported, a
    round solved or released: it allocates a great many short-lived containers (rows, dicts,
    tuples), almost none in reference cycles (they are freed by reference counting), and each
    700 allocations net would set off a collection, and a full one walks every live object
    of the process. Nests (an inner block leaves the collector off for the outer one).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
