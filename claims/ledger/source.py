"""Opening a ledger file: its bytes hashed (SHA-256) and counted as they are read, its text
decoded so that a row holding bytes that are not UTF-8 can still be named."""

from __future__ import annotations

import codecs
import hashlib
import io
import os
from pathlib import Path
from typing import IO, Any, NamedTuple

#: Read-ahead of the decoded stream.
BUFFER_BYTES = 1 << 20


class HashingReader(io.RawIOBase):
    """A raw binary stream that hashes (SHA-256) and counts what passes through."""

    def __init__(self, source: Any) -> None:
        self._src = source
        self.sha = hashlib.sha256()
        self.bytes = 0
        # False once a byte sequence that is not UTF-8 has passed: only then does the reading
        # loop look for the undecodable characters in each row (C-speed check of the bytes).
        self.utf8_ok = True
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self._src.read(len(b))
        if isinstance(data, str):  # a text stream: hash its UTF-8 bytes
            data = data.encode("utf-8")
        n = len(data)
        b[:n] = data
        self.sha.update(data)
        self.bytes += n
        if self.utf8_ok:
            try:
                self._utf8.decode(data, final=not n)
            except UnicodeDecodeError:
                self.utf8_ok = False
        return n


class TextAsBytes:
    """``read(n)`` of UTF-8 bytes over a text stream (for file objects opened in text mode)."""

    def __init__(self, f: IO[str]) -> None:
        self._f = f
        self._pending = b""

    def read(self, n: int) -> bytes:
        while len(self._pending) < n:
            chunk = self._f.read(1 << 16)
            if not chunk:
                break
            self._pending += chunk.encode("utf-8")
        out, self._pending = self._pending[:n], self._pending[n:]
        return out


class Source(NamedTuple):
    """An opened ledger file: the hashing raw reader, the text stream read as CSV, what to
    close afterwards (``None`` for the caller's file object) and the file's name."""

    raw: HashingReader
    stream: IO[str]
    to_close: Any
    name: str | None

    def close(self) -> None:
        """Close a file opened here; leave the caller's file object open."""
        if self.to_close is not None:
            self.to_close.close()
        else:
            self.stream.detach()


def open_source(file: Any) -> Source:
    """Open ``file`` (a path, or a binary or text file object) for reading as CSV.

    Bytes that are not UTF-8 are decoded with ``surrogateescape`` so that the row holding them
    can be named (a strict decoder fails a whole read-ahead chunk, lines away); such rows are
    refused as "not UTF-8 text".
    """
    if isinstance(file, (str, os.PathLike)):
        path = Path(file)
        fh = open(path, "rb")  # noqa: SIM115 - closed by Source.close
        raw = HashingReader(fh)
        name, to_close = path.name, fh
    else:
        # Text streams are re-encoded (and hashed) as UTF-8.
        raw = HashingReader(TextAsBytes(file) if isinstance(file, io.TextIOBase) else file)
        name = getattr(file, "name", None)
        name = Path(name).name if isinstance(name, str) else None
        to_close = None
    buffered = io.BufferedReader(raw, buffer_size=BUFFER_BYTES)
    stream = io.TextIOWrapper(
        buffered, encoding="utf-8-sig", errors="surrogateescape", newline=""
    )
    return Source(raw, stream, to_close, name)
