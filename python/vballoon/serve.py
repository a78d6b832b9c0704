"""`vballoon serve`: a vhost-user balloon backend and its control API until interrupted."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

from vballoon.balloon import BalloonApiError, VhostUserBalloon


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The `serve` subcommand."""
    s = sub.add_parser(
        "serve",
        help="a vhost-user balloon backend (virtio device 5) with Firecracker's balloon API",
        description="Serve a vhost-user balloon on --socket (one frontend at a time, the next "
        "after each disconnect) and, with --api-socket, Firecracker's balloon API as HTTP on "
        "a Unix socket. Runs until SIGINT or SIGTERM.",
    )
    s.add_argument("--socket", required=True, help="the vhost-user socket to listen on")
    s.add_argument("--api-socket", default=None, help="the HTTP control API's Unix socket")
    s.add_argument("--amount-mib", type=int, default=0, help="initial balloon target")
    s.add_argument("--deflate-on-oom", action="store_true", help="offer DEFLATE_ON_OOM")
    s.add_argument(
        "--stats-polling-interval-s", type=int, default=0, help="offer STATS_VQ and poll (0: off)"
    )
    s.add_argument("--no-hinting", action="store_true", help="do not offer FREE_PAGE_HINT")
    s.add_argument("--no-reporting", action="store_true", help="do not offer REPORTING")
    s.add_argument("--queue-size", type=int, default=256)
    s.add_argument("--quiet", action="store_true", help="no status lines on stderr")
    s.set_defaults(func=cmd_serve)


def _log(msg: str) -> None:
    print(f"vballoon serve: {msg}", file=sys.stderr, flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    """`vballoon serve`: the backend and its API until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        balloon = VhostUserBalloon(
            args.socket,
            args.api_socket,
            amount_mib=args.amount_mib,
            deflate_on_oom=args.deflate_on_oom,
            stats_polling_interval_s=args.stats_polling_interval_s,
            free_page_hinting=not args.no_hinting,
            free_page_reporting=not args.no_reporting,
            queue_size=args.queue_size,
        )
    except (BalloonApiError, FileExistsError) as e:
        _log(f"error: {e}")
        return 2
    with balloon:
        _serve(balloon, args, stop)
    if not args.quiet:
        _log("stopped")
    return 0


def _serve(balloon: VhostUserBalloon, args: argparse.Namespace, stop: threading.Event) -> None:
    """Until `stop`: a status line on each connect, negotiation or target change."""
    where = f", API on {args.api_socket}" if args.api_socket else ""
    if not args.quiet:
        _log(f"vhost-user balloon on {args.socket}{where}; offering {balloon.features()}")
    last: tuple[object, ...] = ()
    last_error: str | None = None
    while not stop.wait(0.2):
        s = balloon.status()
        now = (s.connected, s.frontends_served, s.driver_ok, s.target_pages)
        if now != last and not args.quiet:
            line = {
                "t": round(time.time(), 3),
                "connected": s.connected,
                "frontends_served": s.frontends_served,
                "driver_ok": s.driver_ok,
                "negotiated": s.negotiated_features,
                "target_pages": s.target_pages,
                "actual_pages": s.actual_pages,
            }
            _log(json.dumps(line))
        last = now
        # The error list is bounded (oldest dropped): report what follows the last one seen.
        if s.errors and s.errors[-1] != last_error and not args.quiet:
            fresh = s.errors
            if last_error is not None and last_error in s.errors:
                fresh = s.errors[len(s.errors) - s.errors[::-1].index(last_error) :]
            for e in fresh:
                _log(f"device error: {e}")
            last_error = s.errors[-1]
