"""Settings from the environment (prefix ``RESTITUTION_``): docs/configuration.md.

Keys that are not given are generated on first use into ``./var/`` of the working directory
(mode 0600) and reused afterwards; they are never committed (``var/`` is git-ignored).
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def var_dir() -> Path:
    """``./var`` of the working directory: generated keys, default database, mail, Prefect home."""
    path = Path(os.environ.get("RESTITUTION_VAR_DIR", "./var")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _key_file(name: str) -> str:
    path = var_dir() / name
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(48)
    # Create with 0600 atomically; if another process won the race, use its key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RESTITUTION_", extra="ignore")

    database_url: str = "sqlite:///./var/restitution.db"
    secret_key: str = Field(default="", repr=False)
    pii_key: str = Field(default="", repr=False)
    public_url: str = "http://127.0.0.1:8000"
    smtp_url: str | None = Field(default=None, repr=False)
    mail_from: str = "Restitution <no-reply@localhost>"
    maildir: str = "./var/mail"
    documents_dir: str = "./var/documents"
    evm_rpc_url: str | None = None
    evm_private_key: str | None = Field(default=None, repr=False)
    evm_keystore: str | None = None
    evm_keystore_password: str | None = Field(default=None, repr=False)
    evm_token_address: str | None = None  # the USDT contract on a real node
    evm_disperse_address: str | None = None  # the Disperse contract (batches) on a real node
    rate_limit: str = "20/minute"
    rate_limit_storage: str = "memory://"
    password: str | None = Field(default=None, repr=False)
    # Staff tokens: lifetime in seconds (at least 15 minutes: docs/api.md).
    token_ttl_seconds: int = 3600

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    def model_post_init(self, __context: object) -> None:
        if not self.secret_key:
            self.secret_key = _key_file("secret_key")
        if not self.pii_key:
            self.pii_key = _key_file("pii_key")

    @property
    def rate_limit_enabled(self) -> bool:
        return self.rate_limit.strip().lower() not in {"off", "0", "none", ""}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget cached settings (tests and the demo change the environment)."""
    get_settings.cache_clear()
