"""Delivery into a local Maildir (the default when no SMTP server is configured)."""

from __future__ import annotations

import ctypes
import itertools
import mailbox
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path
from typing import Literal, Sequence

from notifications.sending import (
    Outcome,
    Result,
    envelope,
    log_failure,
    log_summary,
    message_id_of,
    recipient_problem,
    scrub,
    wire_bytes,
)


_syncfs = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _syncfs = _libc.syncfs
        _syncfs.argtypes = [ctypes.c_int]
        _syncfs.restype = ctypes.c_int
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        _syncfs = None


class MaildirTransport:
    """A real Maildir (``tmp/``, ``new/``, ``cur/``; created if missing): each message is
    written to ``tmp/`` under a unique name and renamed into ``new/``, as a mail delivery agent
    does, mode 0600 (messages carry access codes).

    ``sync`` says when a delivered message is known to be on disk:

    * ``"batch"`` (default) — write the whole batch, then one ``syncfs`` of the file system
      (Linux) and an ``fsync`` of ``new/``; results are reported after that. A crash before it
      can only cause a resend with the same Message-ID;
    * ``"file"`` — ``fsync`` every file before its rename (the qmail protocol; several threads);
    * ``"none"`` — leave it to the kernel (tests, throw-away demos).
    """

    def __init__(self, path: str | os.PathLike[str], *, sync: Literal["batch", "file", "none"] = "batch", threads: int = 8):
        if sync not in ("batch", "file", "none"):
            raise ValueError("sync must be 'batch', 'file' or 'none'")
        self.path = Path(path)
        # tmp/ new/ cur/, private; safe when several processes start on the same Maildir at once
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        mailbox.Maildir(str(self.path), create=False)  # what mail readers will open
        self.sync = sync
        self._tmp_dir = os.path.join(str(self.path), "tmp", "")
        self._new_dir = os.path.join(str(self.path), "new", "")
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._counter = itertools.count()
        host = socket.gethostname() or "localhost"
        self._host = host.replace("/", r"\057").replace(":", r"\072")

    def __repr__(self) -> str:
        return f"MaildirTransport({str(self.path)!r}, sync={self.sync!r})"

    def _unique_name(self) -> str:
        now = time.time()
        sec = int(now)
        usec = int((now - sec) * 1e6)
        return f"{sec}.M{usec}P{os.getpid()}Q{next(self._counter)}.{self._host}"

    def _write(self, data: bytes, fsync: bool) -> str:
        name = self._unique_name()
        tmp = self._tmp_dir + name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            written = os.write(fd, data)
            if written < len(data):  # a short write (rare): the rest
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        os.close(fd)
        try:
            os.rename(tmp, self._new_dir + name)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return name

    def _deliver(self, msg: EmailMessage) -> Result:
        mid = message_id_of(msg)
        try:
            _, rcpts = envelope(msg)
            problem = recipient_problem(rcpts)
            if problem is not None:
                return Result(Outcome.PERMANENT, problem, mid)
            data = wire_bytes(msg)
        except Exception as exc:  # a message that cannot be serialized will never be
            return Result(Outcome.PERMANENT, scrub(f"cannot serialize the message: {exc}"), mid)
        try:
            self._write(data, self.sync == "file")
        except OSError as exc:
            return Result(Outcome.TEMPORARY, scrub(f"cannot write to the Maildir: {exc.strerror or exc}"), mid)
        return Result(Outcome.DELIVERED, "", mid)

    def send_many(self, messages: Sequence[EmailMessage]) -> list[Result]:
        started = time.perf_counter()
        if self.sync == "file" and len(messages) > 1:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="maildir")
            results = list(self._pool.map(self._deliver, messages))
        else:
            results = [self._deliver(m) for m in messages]
        if self.sync != "none" and any(r.delivered for r in results):
            try:
                self._sync_to_disk()
            except OSError as exc:
                reason = scrub(f"cannot sync the Maildir: {exc.strerror or exc}")
                results = [Result(Outcome.TEMPORARY, reason, r.message_id) if r.delivered else r for r in results]
        for r in results:
            log_failure(r)
        log_summary("maildir", results, started)
        return results

    def _sync_to_disk(self) -> None:
        fd = os.open(self.path / "new", os.O_RDONLY)
        try:
            if self.sync == "batch":
                if _syncfs is not None:
                    if _syncfs(fd) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, os.strerror(err))
                else:  # pragma: no cover - other systems: flush everything
                    os.sync()
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "MaildirTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
