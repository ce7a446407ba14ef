"""Fold every migration into one initial migration regenerated from the models (pre-release
only: a database made before must then be recreated).

    .venv/bin/python migrations/regenerate.py

After the first release, add migrations with `alembic revision --autogenerate` instead.
"""

import os
import tempfile
from pathlib import Path

from alembic import command

from claims.db import MIGRATIONS, alembic_config

for f in (MIGRATIONS / "versions").glob("*.py"):
    f.unlink()
with tempfile.TemporaryDirectory() as tmp:
    url = f"sqlite:///{Path(tmp) / 'empty.db'}"
    cfg = alembic_config(url)
    command.revision(cfg, message="initial schema", autogenerate=True, rev_id="0001")
out = next((MIGRATIONS / "versions").glob("0001_*.py"))
text = out.read_text().replace("sqlmodel.sql.sqltypes.AutoString", "sa.String")
text = text.replace("claims.models.UTCDateTime()", "claims.models.UTCDateTime()")
out.write_text(text)
print(f"wrote {out.relative_to(Path(os.getcwd())) if str(out).startswith(os.getcwd()) else out}")
