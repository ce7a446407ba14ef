"""The write gate: writers of one database queue on a lock instead of racing for it.

SQLite lets one writer in at a time; the others would wait in its busy handler, which polls
with sleeps — under many concurrent writers throughput collapses and latencies stretch to
seconds. The gate queues this process's writers on a lock, and the processes on an ``flock``
of a file beside the database (``<database>.write-lock``, with ``<database>.write-queue`` as
the turnstile that keeps the queue fair).

- :func:`write_gate` — a context manager around one write transaction; a no-op on
  PostgreSQL, whose row locks queue writers by themselves.
- :func:`drain_gate` — the gate a group-commit writer (:class:`claims.intake.GroupCommit`)
  passes: :func:`write_gate`'s on SQLite, and on PostgreSQL one per database for this
  host's processes (an ``flock`` in the var directory).
- :class:`WriteGate` — one database's gate (``enter``/``exit``, ``try_enter`` and
  ``enter_async``, which waits off the event loop).
"""

from __future__ import annotations

import hashlib
import os
import threading
from contextlib import contextmanager

from sqlalchemy import Engine

from claims.db.bulk import is_sqlite

__all__ = ["WriteGate", "drain_gate", "write_gate"]


@contextmanager
def write_gate(engine: Engine):
    """Hold the write gate of ``engine``'s database for the ``with`` block: this process's
    SQLite writers queue on a lock, the processes on an ``flock`` (see the module docstring).
    A no-op on PostgreSQL."""
    gate = _sqlite_gate(engine)
    if gate is None:
        yield
        return
    gate.enter()
    try:
        yield
    finally:
        gate.exit()


class WriteGate:
    """The write gate of one database: a process-wide lock, then an ``flock`` of a file.

    Processes queue fairly: a second ``flock`` (the *turnstile*) is held while waiting for the
    gate, so a process leaving the gate and coming straight back waits behind the one that
    was already waiting, instead of winning the race for the lock again and again. Without a
    file (an in-memory database) only the process-wide lock is taken."""

    def __init__(self, database: str | None) -> None:
        self.lock = threading.Lock()
        self.fd = _lock_file(database)
        self.turnstile = _lock_file(database, ".write-queue") if self.fd is not None else None

    def enter(self) -> None:
        """Wait for the gate and enter it."""
        self.lock.acquire()
        if self.fd is None:
            return
        import fcntl

        try:
            if self.turnstile is not None:
                fcntl.flock(self.turnstile, fcntl.LOCK_EX)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX)
            finally:
                if self.turnstile is not None:
                    fcntl.flock(self.turnstile, fcntl.LOCK_UN)
        except BaseException:
            self.lock.release()
            raise

    def try_enter(self) -> bool:
        """Enter without waiting, when nobody holds the gate or waits for it."""
        if not self.lock.acquire(blocking=False):
            return False
        if self.fd is None:
            return True
        import fcntl

        try:
            if self.turnstile is not None:
                fcntl.flock(self.turnstile, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                if self.turnstile is not None:
                    fcntl.flock(self.turnstile, fcntl.LOCK_UN)
        except BlockingIOError:
            self.lock.release()
            return False
        except BaseException:
            self.lock.release()
            raise
        return True

    def exit(self) -> None:
        """Leave the gate."""
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.lock.release()

    async def enter_async(self) -> None:
        """Enter without blocking the event loop: the wait (another process writing) happens
        in a worker thread while the loop goes on reading and validating requests."""
        import asyncio

        if self.try_enter():
            return
        entering = asyncio.get_running_loop().run_in_executor(None, self.enter)
        try:
            await asyncio.shield(entering)
        except BaseException:  # cancelled while waiting: leave once the thread has entered
            entering.add_done_callback(lambda f: f.exception() is None and self.exit())
            raise


def drain_gate(engine: Engine) -> WriteGate:
    """The gate a group-commit writer's batches pass: :func:`write_gate`'s on SQLite; on
    PostgreSQL one per database for this host's processes (an ``flock`` in the var
    directory), because their batches queue on the audit chain's head row anyway and a batch
    waiting for that row lock would hold its process's event loop; waiting for the gate does
    not (:meth:`WriteGate.enter_async`). Row locks still order writers across hosts."""
    if is_sqlite(engine):
        return _sqlite_gate(engine)
    key = engine.url.render_as_string(hide_password=True)
    gate = _gates.get(key)
    if gate is None:
        with _gates_lock:
            gate = _gates.get(key)
            if gate is None:
                from claims.settings import var_dir

                digest = hashlib.sha256(key.encode()).hexdigest()[:16]
                gate = _gates[key] = WriteGate(str(var_dir() / f"db-{digest}"))
    return gate


_gates: dict[str | None, WriteGate] = {}
_lock_files: dict[tuple[str | None, str], int | None] = {}
_gates_lock = threading.Lock()


def _sqlite_gate(engine: Engine) -> WriteGate | None:
    """The write gate of ``engine``'s SQLite database; None on PostgreSQL."""
    if not is_sqlite(engine):
        return None
    database = engine.url.database
    gate = _gates.get(database)
    if gate is None:
        with _gates_lock:
            gate = _gates.get(database)
            if gate is None:
                gate = _gates[database] = WriteGate(database)
    return gate


def _lock_file(database: str | None, suffix: str = ".write-lock") -> int | None:
    """The open lock file ``<database><suffix>`` (one per process), or None where there is
    no file to lock (an in-memory database, no ``fcntl``)."""
    key = (database, suffix)
    if key in _lock_files:
        return _lock_files[key]
    fd = None
    if database and database != ":memory:" and not database.startswith("file:"):
        try:
            import fcntl  # noqa: F401  (POSIX only: no lock files without flock)

            fd = os.open(f"{database}{suffix}", os.O_RDWR | os.O_CREAT, 0o600)
        except (ImportError, OSError):
            fd = None
    _lock_files[key] = fd
    return fd
