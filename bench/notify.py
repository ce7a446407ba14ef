"""Bench: notifications rendered and delivered (notifications.render + notifications.transport).

    .venv/bin/python bench/notify.py [-n N] [--quick] [--workers W] [--connections C]
                                     [--batch B] [--server-procs S] [--json]

N notifications (default 100,000; ``--quick`` 5,000), every kind in Kazakh, Russian and English
in turn, each to its own address, are rendered and delivered:

- ``render``  — rendering alone in one process (subject, text, HTML, headers, bytes): the
                CPU cost of a message, for reference;
- ``maildir`` — render + deliver into a fresh Maildir with the default durability (each batch
                synced to disk before it counts as delivered), W worker processes;
- ``smtp``    — render + deliver to an aiosmtpd server on loopback (S server processes sharing
                the port), C connections in parallel in total (threads in the W workers), one
                connection per batch of B.
- ``outbox``  — the path ``restitution notify`` and the pipeline take: N rows queued in a fresh
                SQLite outbox, then ``notifications.delivery.deliver_pending`` into a Maildir
                (claim a batch, render, write, sync, mark sent, blank secrets), with its default
                of every core for a large backlog (``--outbox-workers`` to choose); CPU counts
                this process and its helpers.

Every message is checked at the end: the Maildir holds N files in ``new/``; the SMTP server
accepted N messages with N distinct Message-IDs; the outbox has N rows sent and N files.
Prints a table with messages/s and the ratio to the goal; ``--json`` prints one JSON object as the last line.

Goals (issue 7): ≥ 5,000 messages/s to the Maildir and ≥ 1,000 messages/s over SMTP.
The server runs on the same cores as the senders.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PUBLIC_URL = "https://restitution.example.kz"
MAIL_FROM = "Restitution <no-reply@restitution.example.kz>"
GOALS = {"maildir": 5000.0, "smtp": 1000.0, "outbox": 5000.0}
LANGS = ("kk", "ru", "en")


def notification(i: int) -> tuple[str, str, dict[str, object], str]:
    """The i-th notification: (kind, language, context, recipient), all kinds and languages."""
    from notifications.render import KINDS

    kind = KINDS[i % len(KINDS)]
    lang = LANGS[(i // len(KINDS)) % 3]
    ref = f"KZR-{i % 9000 + 1000:04d}-{i // 9000 % 9000 + 1000:04d}"
    micro = 1_000_000 + (i * 7919) % 900_000_000
    amount = f"{micro // 1_000_000}.{micro % 1_000_000:06d}".rstrip("0").rstrip(".")
    ctx: dict[str, object] = {"reference": ref, "name": ("Әсел Нұрланқызы", "Иван Петров", "")[i % 3]}
    if kind == "needs_info":
        ctx["request"] = "Please upload a bank statement showing your deposit."
    elif kind == "approved":
        ctx["recognized_loss"] = amount
    elif kind == "rejected":
        ctx["reason"] = "The scheme's records show no deposit from this account."
    elif kind in ("dispute_received", "dispute_settled", "allocated", "failed"):
        ctx["amount"] = amount
        ctx["rate_percent"] = "25.5"
    elif kind == "address_change_requested":
        ctx.update(code=f"{i % 1_000_000:06d}", payout_network="tron",
                   payout_address="TJRabPrwbZy45sbavfcjinPJC18kjpRTv8", expires_minutes=15)
    elif kind == "address_changed":
        ctx.update(payout_network="ethereum", payout_address="0x52908400098527886E0F7030069857D2E4169EE7")
    elif kind == "paid":
        ctx.update(amount=amount, tx_id=f"{i:064x}", payout_network=("tron", "ethereum")[i % 2])
    elif kind == "token_reset":
        ctx["access_token"] = f"tok_{i:032x}"
    return kind, lang, ctx, f"victim{i}@example.kz"


def render_one(i: int):  # noqa: ANN201
    from notifications.render import render

    kind, lang, ctx, to = notification(i)
    return render(kind, lang, ctx, public_url=PUBLIC_URL, mail_from=MAIL_FROM, to=to, notification_id=i)


# --------------------------------------------------------------------------- workers


def _batches(start: int, stop: int, size: int) -> list[range]:
    return [range(lo, min(lo + size, stop)) for lo in range(start, stop, size)]


def _maildir_worker(args: tuple[str, int, int, int, str]) -> tuple[int, float, float, float]:
    from notifications.transport import MaildirTransport

    path, start, stop, batch, sync = args
    cpu0 = time.process_time()
    transport = MaildirTransport(path, sync=sync)  # type: ignore[arg-type]
    delivered, t_render, t_send = 0, 0.0, 0.0
    for ids in _batches(start, stop, batch):
        t0 = time.perf_counter()
        msgs = [render_one(i) for i in ids]
        t1 = time.perf_counter()
        delivered += sum(r.delivered for r in transport.send_many(msgs))
        t_render += t1 - t0
        t_send += time.perf_counter() - t1
    return delivered, t_render, t_send, time.process_time() - cpu0


def _smtp_worker(args: tuple[int, int, int, int, int]) -> tuple[int, float, float, float]:
    from notifications.transport import SmtpTransport

    port, start, stop, batch, threads = args
    cpu0 = time.process_time()
    transport = SmtpTransport(f"smtp://127.0.0.1:{port}", timeout=60, local_hostname="bench.local")
    lock = threading.Lock()
    totals = [0, 0.0, 0.0]

    def run(ids: range) -> None:
        t0 = time.perf_counter()
        msgs = [render_one(i) for i in ids]
        t1 = time.perf_counter()
        ok = sum(r.delivered for r in transport.send_many(msgs))
        with lock:
            totals[0] += ok
            totals[1] += t1 - t0
            totals[2] += time.perf_counter() - t1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, _batches(start, stop, batch)))
    return totals[0], totals[1], totals[2], time.process_time() - cpu0  # type: ignore[return-value]


def _warm() -> None:
    from notifications.render import warm_up

    warm_up()


# --------------------------------------------------------------------------- SMTP server


def _server_main(port: int, ready: mp.Event, stop: mp.Event, out: mp.Queue) -> None:  # type: ignore[valid-type]
    import asyncio
    import logging

    import aiosmtpd.smtp
    from aiosmtpd.smtp import SMTP

    class _Quiet:  # the bench server logs nothing: aiosmtpd calls log.debug for every line
        def _skip(self, *args: object, **kwargs: object) -> None:
            return None

        debug = info = warning = error = exception = _skip

        def isEnabledFor(self, level: int) -> bool:  # noqa: N802
            return False

    aiosmtpd.smtp.log = _Quiet()  # type: ignore[assignment]
    logging.getLogger("mail.log").setLevel(logging.WARNING)

    class Counting:
        def __init__(self) -> None:
            self.count = 0
            self.bytes = 0
            self.ids: set[bytes] = set()

        async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
            content = envelope.content
            start = content.find(b"Message-ID: ")
            self.ids.add(content[start : content.find(b"\r\n", start)])
            self.count += 1
            self.bytes += len(content)
            return "250 OK"

    handler = Counting()
    cpu0 = time.process_time()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(256)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(lambda: SMTP(handler, hostname="mx.bench", ident="bench"), sock=sock)
    )
    threading.Thread(target=lambda: (stop.wait(), loop.call_soon_threadsafe(loop.stop)), daemon=True).start()
    ready.set()
    loop.run_forever()
    server.close()
    out.put((handler.count, handler.bytes, sorted(handler.ids), time.process_time() - cpu0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- runs


def bench_render(n: int) -> dict[str, float]:
    _warm()
    t0, cpu0 = time.perf_counter(), time.process_time()
    size = 0
    for i in range(n):
        size += len(render_one(i).wire_bytes())
    dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"messages": n, "seconds": dt, "rate": n / dt, "cpu_us_per_message": cpu / n * 1e6, "avg_bytes": size / n}


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    step = -(-n // parts)
    return [(lo, min(lo + step, n)) for lo in range(0, n, step)]


def _fs_type(path: Path) -> str:
    best, fstype = "", "?"
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                _, mount, kind = line.split()[:3]
                if str(path).startswith(mount) and len(mount) > len(best):
                    best, fstype = mount, kind
    except OSError:
        pass
    return fstype


def bench_maildir(n: int, workers: int, batch: int, sync: str = "batch", parent: Path | None = None) -> dict[str, object]:
    parent = parent or ROOT / "var"
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-maildir-", dir=parent))
    try:
        path = root / "mail"
        ctx = mp.get_context("fork")
        with ctx.Pool(workers, initializer=_warm) as pool:
            pool.map(_warm_noop, range(workers))  # workers up and warm before the clock starts
            t0 = time.perf_counter()
            out = pool.map(_maildir_worker, [(str(path), lo, hi, batch, sync) for lo, hi in _split(n, workers)])
            dt = time.perf_counter() - t0
        delivered = sum(o[0] for o in out)
        files = sum(1 for _ in os.scandir(path / "new"))
        assert delivered == n and files == n, (delivered, files)
        cpu = sum(o[3] for o in out)
        return {
            "messages": n, "seconds": dt, "rate": n / dt, "workers": workers, "batch": batch, "sync": sync,
            "filesystem": _fs_type(root.resolve()),
            "render_s": sum(o[1] for o in out), "deliver_s": sum(o[2] for o in out),
            "cpu_us_per_message": cpu / n * 1e6,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _warm_noop(_: int) -> None:
    return None


def bench_smtp(n: int, workers: int, connections: int, batch: int, server_procs: int) -> dict[str, float]:
    ctx = mp.get_context("fork")
    port = _free_port()
    stop = ctx.Event()
    out_q: mp.Queue = ctx.Queue()
    servers = []
    for _ in range(server_procs):
        ready = ctx.Event()
        proc = ctx.Process(target=_server_main, args=(port, ready, stop, out_q), daemon=True)
        proc.start()
        if not ready.wait(30):
            raise RuntimeError("SMTP server did not start")
        servers.append(proc)
    threads = max(1, connections // workers)
    try:
        with ctx.Pool(workers, initializer=_warm) as pool:
            pool.map(_warm_noop, range(workers))
            t0 = time.perf_counter()
            out = pool.map(_smtp_worker, [(port, lo, hi, batch, threads) for lo, hi in _split(n, workers)])
            dt = time.perf_counter() - t0
    finally:
        stop.set()
        results = [out_q.get(timeout=60) for _ in servers]
        for proc in servers:
            proc.join(10)
    delivered = sum(o[0] for o in out)
    received = sum(r[0] for r in results)
    ids = set().union(*(r[2] for r in results))
    assert delivered == n and received == n and len(ids) == n, (delivered, received, len(ids))
    client_cpu = sum(o[3] for o in out)
    server_cpu = sum(r[3] for r in results)
    return {
        "messages": n, "seconds": dt, "rate": n / dt, "workers": workers, "connections": threads * workers,
        "batch": batch, "server_procs": server_procs, "render_s": sum(o[1] for o in out),
        "deliver_s": sum(o[2] for o in out), "bytes": sum(r[1] for r in results),
        "cpu_us_per_message": (client_cpu + server_cpu) / n * 1e6,
        "client_cpu_us_per_message": client_cpu / n * 1e6, "server_cpu_us_per_message": server_cpu / n * 1e6,
    }


def bench_outbox(n: int, batch: int, workers: int | None, parent: Path | None = None) -> dict[str, object]:
    import resource

    from sqlalchemy import func, select
    from sqlmodel import Session

    from claims import outbox
    from claims.db import ensure_schema, make_engine
    from claims.models import Notification
    from claims.settings import Settings
    from notifications import delivery

    parent = parent or ROOT / "var"
    parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-outbox-", dir=parent))
    try:
        engine = make_engine(f"sqlite:///{root / 'outbox.db'}")
        ensure_schema(engine)
        with Session(engine) as s:
            for lo in range(0, n, 10_000):
                items = []
                for i in range(lo, min(lo + 10_000, n)):
                    kind, lang, ctx, to = notification(i)
                    claim = outbox.Recipient(None, ctx.pop("reference"), lang, to)
                    items.append((claim, kind, ctx, None))
                outbox.enqueue_batch(s, items)
            s.commit()
        settings = Settings(maildir=str(root / "mail"), public_url=PUBLIC_URL, mail_from=MAIL_FROM)
        _warm()
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0, cpu0 = time.perf_counter(), time.process_time()
        rep = delivery.deliver_pending(engine, batch_size=batch, settings=settings, workers=workers)
        dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        used = delivery.helper_count() + 1
        delivery.stop_helpers()  # the helpers' CPU is counted once they have exited
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        helpers_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
        with Session(engine) as s:
            sent = s.execute(select(func.count()).where(Notification.state == "sent")).scalar_one()
        files = sum(1 for _ in os.scandir(root / "mail" / "new"))
        assert rep.sent == sent == files == n, (rep.as_dict(), sent, files)
        engine.dispose()
        return {
            "messages": n, "seconds": dt, "rate": n / dt, "workers": used, "batch": batch,
            "cpu_us_per_message": (cpu + helpers_cpu) / n * 1e6,
            "main_cpu_us_per_message": cpu / n * 1e6, "helpers_cpu_us_per_message": helpers_cpu / n * 1e6,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=None, help="notifications (default 100,000; --quick 5,000)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="sender processes (default: cores)")
    ap.add_argument("--connections", type=int, default=4, help="SMTP connections in parallel, in total")
    ap.add_argument("--batch", type=int, default=500, help="messages per batch (one SMTP connection each)")
    ap.add_argument("--server-procs", type=int, default=2, help="aiosmtpd processes sharing the port (SO_REUSEPORT)")
    ap.add_argument("--maildir-sync", choices=("batch", "file", "none"), default="batch",
                    help="MaildirTransport durability (default: batch, the transport's default)")
    ap.add_argument("--maildir-parent", type=Path, default=ROOT / "var",
                    help="where the throw-away Maildir is made (default ./var, where RESTITUTION_MAILDIR lives)")
    ap.add_argument("--outbox-workers", type=int, default=None,
                    help="processes for the outbox run (default: deliver_pending's own choice)")
    ap.add_argument("--outbox-batch", type=int, default=None,
                    help="batch of the outbox run (default: deliver_pending's 2,000, or N/10 for a small N)")
    ap.add_argument("--only", choices=("render", "maildir", "smtp", "outbox"), help="run one part (for profiling)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.n or (5_000 if args.quick else 100_000)
    args.outbox_batch = args.outbox_batch or min(2000, max(100, n // 10))

    if args.only:
        fn = {
            "render": lambda: bench_render(n),
            "maildir": lambda: bench_maildir(n, args.workers, args.batch, args.maildir_sync, args.maildir_parent),
            "smtp": lambda: bench_smtp(n, args.workers, args.connections, args.batch, args.server_procs),
            "outbox": lambda: bench_outbox(n, args.outbox_batch, args.outbox_workers, args.maildir_parent),
        }[args.only]
        print(json.dumps({args.only: fn()}, separators=(",", ":")))
        return
    render = bench_render(min(n, 5_000))
    maildir = bench_maildir(n, args.workers, args.batch, args.maildir_sync, args.maildir_parent)
    smtp = bench_smtp(n, args.workers, args.connections, args.batch, args.server_procs)
    outbox = bench_outbox(n, args.outbox_batch, args.outbox_workers, args.maildir_parent)

    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"notifications: {n:,} (12 kinds × kk/ru/en), {cores} cores, batch {args.batch}, "
          f"load average at the end {load:.1f}")
    print(f"{'run':<9} {'messages':>9} {'seconds':>8} {'msg/s':>9} {'goal':>7} {'× goal':>7} {'CPU µs/msg':>10}  notes")
    print(f"{'render':<9} {render['messages']:>9,} {render['seconds']:>8.2f} {render['rate']:>9,.0f} {'':>7} {'':>7}"
          f" {render['cpu_us_per_message']:>10,.0f}  1 process, {render['avg_bytes']:,.0f} bytes/message")
    for name, r, notes in (
        ("maildir", maildir, f"{maildir['workers']} processes, sync={maildir['sync']}, {maildir['filesystem']}"),
        ("smtp", smtp, f"{smtp['workers']} processes × {smtp['connections'] // smtp['workers']} connections, "
                       f"{smtp['server_procs']} aiosmtpd process(es) on the same cores"),
        ("outbox", outbox, f"deliver_pending from SQLite, {outbox['workers']} process(es), batch {outbox['batch']}"),
    ):
        goal = GOALS[name]
        print(f"{name:<9} {r['messages']:>9,} {r['seconds']:>8.2f} {r['rate']:>9,.0f} {goal:>7,.0f} "
              f"{r['rate'] / goal:>6.2f}× {r['cpu_us_per_message']:>10,.0f}  {notes}")
    print(f"smtp CPU per message: senders {smtp['client_cpu_us_per_message']:,.0f} µs + server "
          f"{smtp['server_cpu_us_per_message']:,.0f} µs; CPU-bound ceiling on {cores} idle cores: maildir "
          f"{cores / maildir['cpu_us_per_message'] * 1e6:,.0f}/s, smtp {cores / smtp['cpu_us_per_message'] * 1e6:,.0f}/s")
    print(f"outbox CPU per message: {outbox['cpu_us_per_message']:,.0f} µs (this process "
          f"{outbox['main_cpu_us_per_message']:,.0f} + helpers {outbox['helpers_cpu_us_per_message']:,.0f}); "
          f"outbox − maildir = {outbox['cpu_us_per_message'] - maildir['cpu_us_per_message']:,.0f} µs "
          f"(the database's claim and mark)")
    print(f"smtp / maildir: {smtp['rate'] / maildir['rate']:.2f}; maildir / render(1 process): "
          f"{maildir['rate'] / render['rate']:.2f}; outbox / maildir: {outbox['rate'] / maildir['rate']:.2f}")
    if args.json:
        print(json.dumps({"n": n, "render": render, "maildir": maildir, "smtp": smtp, "outbox": outbox,
                          "goals": GOALS}, separators=(",", ":")))


if __name__ == "__main__":
    main()
