"""The FastAPI application: JSON API under /api/v1, server-rendered pages, problem+json errors."""

from __future__ import annotations

import importlib

from fastapi import FastAPI

from api import problems

# Each module exposes ``router`` (an APIRouter); order matters only for docs.
ROUTERS = [
    "api.routes.victims",
    "api.pages.public",
    "api.routes.auth",
    "api.routes.review",
    "api.routes.rounds",
    "api.routes.payouts",
    "api.pages.reports",
    "api.pages.staff",
]


def create_app() -> FastAPI:
    from claims.db import get_engine

    get_engine()  # schema current before the first request
    app = FastAPI(
        title="Restitution",
        version="0.1.0",
        description="Claims, verification, distribution rounds and payouts for the victims "
        "of pyramid schemes. Errors are application/problem+json.",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    problems.install(app)
    for name in ROUTERS:
        module = importlib.import_module(name)
        app.include_router(module.router)
        if hasattr(module, "install"):
            module.install(app)
    return app
