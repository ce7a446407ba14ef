"""Evidence documents uploaded by a claimant.

PDF, JPEG or PNG only, at most 10 MiB, the type told by the content's magic bytes (the
``filetype`` package), never by the file name or the declared content type. A document is
stored under a server-made name (a UUID, plus the type's extension) in
``RESTITUTION_DOCUMENTS_DIR``; its SHA-256 is recorded in a ``document`` row and the upload is
audited. Files are written to a temporary name first and renamed when complete, so a
half-written upload never carries a real name; if the database transaction that records it
fails, the caller :func:`discard`\\ s the file.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import func, select
from sqlmodel import Session

from claims import audit
from claims.audit import Actor
from claims.errors import Conflict, PayloadTooLarge, UnsupportedMediaType
from claims.models import Claim, ClaimStatus, Document, utcnow
from claims.settings import get_settings

MAX_BYTES = 10 * 1024 * 1024
MAX_PER_CLAIM = 50
#: Detected MIME type → extension of the stored file.
ALLOWED = {"application/pdf": "pdf", "image/jpeg": "jpg", "image/png": "png"}
_HEAD = 8192
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SavedFile:
    id: str
    path: Path
    stored_name: str
    content_type: str
    size: int
    sha256: str


def detect_type(head: bytes) -> str | None:
    """The MIME type of an allowed document from its first bytes, or None."""
    import filetype

    kind = filetype.guess(head)
    if kind is None or kind.mime not in ALLOWED:
        return None
    return kind.mime


def documents_dir() -> Path:
    path = Path(get_settings().documents_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_can_upload(session: Session, claim: Claim) -> None:
    if claim.status == ClaimStatus.rejected.value:
        raise Conflict("documents cannot be added to a rejected claim")
    count = session.execute(
        select(func.count(Document.id)).where(Document.claim_id == claim.id)
    ).scalar_one()
    if count >= MAX_PER_CLAIM:
        raise Conflict(f"a claim can have at most {MAX_PER_CLAIM} documents")


def save_upload(src: BinaryIO, *, directory: Path | None = None) -> SavedFile:
    """Check and store an upload's bytes; no database. 415 for another type, 413 when larger
    than :data:`MAX_BYTES`."""
    head = src.read(_HEAD)
    mime = detect_type(head)
    if mime is None:
        raise UnsupportedMediaType("only PDF, JPEG and PNG documents are accepted")
    directory = directory or documents_dir()
    doc_id = str(uuid.uuid4())
    stored_name = f"{doc_id}.{ALLOWED[mime]}"
    tmp = directory / f".{doc_id}.part"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "xb") as out:
            chunk = head
            while chunk:
                size += len(chunk)
                if size > MAX_BYTES:
                    raise PayloadTooLarge("a document may be at most 10 MiB")
                digest.update(chunk)
                out.write(chunk)
                chunk = src.read(_CHUNK)
            out.flush()
            os.fsync(out.fileno())
        final = directory / stored_name
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return SavedFile(doc_id, final, stored_name, mime, size, digest.hexdigest())


def discard(saved: SavedFile) -> None:
    saved.path.unlink(missing_ok=True)


def record(session: Session, claim: Claim, saved: SavedFile, *, actor: Actor | None = None) -> Document:
    """The ``document`` row and its audit event, in the caller's transaction."""
    check_can_upload(session, claim)
    doc = Document(
        id=saved.id, claim_id=claim.id, content_type=saved.content_type, size=saved.size,
        sha256=saved.sha256, stored_name=saved.stored_name, created_at=utcnow(),
    )
    session.add(doc)
    session.flush()
    audit.record(
        session, actor or Actor.claimant(claim.reference), "claim.document_added", "claim",
        claim.reference,
        after={"document_id": doc.id, "sha256": doc.sha256, "content_type": doc.content_type,
               "size": doc.size},
        claim_pk=claim.id,
    )
    return doc
