"""``restitution serve [--host H] [--port P] [--workers N] [--no-background]``.

Runs the API and the web pages (``api.app:create_app``, as a uvicorn factory) and, beside
them, the background processing.

Background processing hook: :data:`BACKGROUND` lists ``"module:function"`` names. ``serve``
starts each in its own daemon thread *in the serving process itself* (the uvicorn supervisor
when ``--workers`` > 1, so it runs once however many workers serve HTTP), calling
``function(stop)`` with a :class:`threading.Event` that is set when the server shuts down;
the function should loop until ``stop.is_set()`` (e.g. ``stop.wait(interval)`` between
passes) and return. Processing runs on the database alone (claims are state in the database),
so a function may equally run in another host's ``restitution worker``. ``--no-background``
serves HTTP only (load tests, a second front-end host).

The schema is brought current once before the workers start, so workers never race to
migrate a fresh database.
"""

from __future__ import annotations

import importlib
import threading
from typing import Annotated

import typer

#: Background callables ``"module:function"``, each called as ``function(stop_event)``.
BACKGROUND: list[str] = ["flows.background:run"]

#: How long shutdown waits for each background thread to return.
STOP_TIMEOUT = 30.0


def _resolve(name: str):
    module, _, func = name.partition(":")
    if not func:
        raise ValueError(f"background entry {name!r} is not 'module:function'")
    return getattr(importlib.import_module(module), func)


def start_background(stop: threading.Event, names: list[str] | None = None) -> list[threading.Thread]:
    threads = []
    for name in BACKGROUND if names is None else names:
        fn = _resolve(name)
        t = threading.Thread(target=fn, args=(stop,), name=f"background:{name}", daemon=True)
        t.start()
        threads.append(t)
    return threads


def stop_background(stop: threading.Event, threads: list[threading.Thread]) -> None:
    stop.set()
    for t in threads:
        t.join(STOP_TIMEOUT)


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Uvicorn worker processes.")] = 1,
    background: Annotated[bool, typer.Option("--background/--no-background",
                                             help="Run the background processing too.")] = True,
    log_level: Annotated[str, typer.Option(help="Uvicorn log level.")] = "info",
    proxy_headers: Annotated[bool, typer.Option(help="Trust X-Forwarded-For from "
                                                     "--forwarded-allow-ips.")] = False,
    forwarded_allow_ips: Annotated[str, typer.Option(help="Proxies trusted for "
                                                          "X-Forwarded-For.")] = "127.0.0.1",
    timeout_keep_alive: Annotated[int, typer.Option(help="Seconds an idle keep-alive "
                                                         "connection stays open.")] = 5,
) -> None:
    """The API, the web pages and background processing."""
    import uvicorn

    from claims.db import get_engine

    get_engine()  # migrate once, before any worker starts
    stop = threading.Event()
    threads = start_background(stop) if background else []
    try:
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            proxy_headers=proxy_headers,
            forwarded_allow_ips=forwarded_allow_ips,
            timeout_keep_alive=timeout_keep_alive,
            server_header=False,
        )
    finally:
        stop_background(stop, threads)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
