"""The `vballoon` command: the demo, benchmarks and two-process migration."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from vballoon import _native

console = Console()


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    return table


def ring_demo(guest_size: str = "1GiB", buffers: int = 1_000_000) -> list[dict[str, Any]]:
    """Pushes `buffers` chains through a queue pair in a fresh guest, one and two threads."""
    mem = _native.GuestMemory(guest_size)
    rows = []
    for threaded in (False, True):
        for segments in (1, 4):
            r = _native.pump_queue(mem, buffers, segments=segments, threaded=threaded)
            rows.append({"threads": 2 if threaded else 1, "segments": segments, **r})
    return rows


def cmd_demo(args: argparse.Namespace) -> int:
    rows = ring_demo(args.ring_guest, args.buffers)
    console.print(
        _table(
            f"Virtqueue round trips: {args.buffers:,} buffers in a {args.ring_guest} guest",
            ["threads", "segments", "buffers/s", "kicks", "interrupts", "seconds"],
            [
                [
                    r["threads"],
                    r["segments"],
                    f"{r['buffers_per_second'] / 1e6:.2f} M",
                    f"{int(r['kicks']):,}",
                    f"{int(r['interrupts']):,}",
                    f"{r['seconds']:.3f}",
                ]
                for r in rows
            ],
        )
    )
    if args.json:
        json.dump({"ring": rows}, sys.stdout, indent=2)
        print()
    return 0


def cmd_bench_virtq(args: argparse.Namespace) -> int:
    return cmd_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vballoon",
        description="virtio-balloon fast (de)inflation and free-page-hinted live migration",
    )
    p.add_argument("--version", action="version", version=f"vballoon {_native.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the main demo: rings, inflate comparison, migration")
    demo.add_argument("--ring-guest", default="1GiB", help="guest size for the ring demo")
    demo.add_argument("--buffers", type=int, default=1_000_000, help="buffers through the ring")
    demo.add_argument("--json", action="store_true", help="also print the results as JSON")
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench", required=True)
    bv = bsub.add_parser("virtq", help="ring round trips per second")
    bv.add_argument("--ring-guest", default="1GiB")
    bv.add_argument("--buffers", type=int, default=1_000_000)
    bv.add_argument("--json", action="store_true")
    bv.set_defaults(func=cmd_bench_virtq)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except _native.VBalloonError as e:
        console.print(f"[red]error:[/red] {type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
