"""The `vballoon` command: the demo, benchmarks and two-process migration."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from vballoon import _native, output, progress, report, schema
from vballoon.types import CHOICES

if TYPE_CHECKING:
    from vballoon import InflateTable

# Errors and messages go to stderr; tables go where output.console_for says.
console = Console(stderr=True)


def ring_demo(
    guest_size: str = "1GiB", buffers: int = 1_000_000, quiet: bool = True
) -> list[dict[str, Any]]:
    """Pushes `buffers` chains through a queue pair in a fresh guest, one and two threads."""
    mem = _native.GuestMemory(guest_size)
    rows = []
    with progress.steps("virtqueue round trips", 4, quiet) as advance:
        for threaded in (False, True):
            for segments in (1, 4):
                r = _native.pump_queue(mem, buffers, segments=segments, threaded=threaded)
                threads = 2 if threaded else 1
                rows.append({"threads": threads, "segments": segments, **r.to_dict()})
                advance(f"{threads} threads, {segments} segments")
    return rows


def inflate_table(table: InflateTable) -> Table:
    """The inflate comparison as a table: time, stages, ratios to pfn and to the floor."""
    gib = 1 << 30
    title = (
        f"Inflate {table.inflate_bytes / gib:.2f} GiB of a {table.guest_bytes / gib:.2f} GiB "
        f"guest, every page touched (median of {table.rounds})"
    )
    if table.fragmentation is not None:
        title += f", fragmentation {table.fragmentation}"
    rows = [report.inflate_cells(r.to_dict()) for r in table.rows]
    return output.table(title, report.INFLATE_COLUMNS, rows)


def migrate_table(rows: Sequence[dict[str, Any]], title: str) -> Table:
    """Migration bench rows (dicts) as a table."""
    return output.table(title, report.MIGRATE_COLUMNS, [report.migrate_cells(r) for r in rows])


def _bench(args: argparse.Namespace, bench: Callable[..., Any], *a: Any, **kw: Any) -> Any:
    """Runs a native bench with its progress drawn (unless `--quiet`)."""
    return progress.run_bench(lambda p: bench(*a, **kw, progress=p), output.quiet(args))


def cmd_demo(args: argparse.Namespace) -> int:
    """`vballoon demo` (and `bench virtq`): rings, then inflate, migration, a real guest."""
    out = output.console_for(args)
    rows = ring_demo(args.ring_guest, args.buffers, output.quiet(args))
    out.print(
        output.table(
            f"Virtqueue round trips: {args.buffers:,} buffers in a {args.ring_guest} guest",
            report.VIRTQ_COLUMNS,
            [report.virtq_cells(r) for r in rows],
        )
    )
    parts = [schema.part("virtq", output.ring_scenario(args.ring_guest, args.buffers), rows)]
    if not args.ring_only:
        table = _bench(
            args, _native.bench_inflate_table, args.guest, args.inflate, rounds=args.rounds
        )
        out.print(inflate_table(table))
        sc = output.inflate_scenario(table, "sync", "anonymous")
        parts.append(schema.part("inflate", sc, output.table_parts(table)[1]))
        scenarios, variants = ["m1", "m2"], ["off", "skip", "bitmap", "upstream", "reporting"]
        rows = [
            r.to_dict()
            for r in _bench(
                args,
                _native.bench_migrate_rows,
                scenarios,
                variants,
                guest=args.migrate_guest,
                repetitions=1,
            )
        ]
        out.print(
            migrate_table(
                rows,
                f"Live migration of a {args.migrate_guest} guest at 10 Gbit/s "
                "(M1: idle; M2: after a memory-heavy workload freed its memory)",
            )
        )
        sc = output.migrate_scenario(scenarios, variants, args.migrate_guest, 1, "10Gbit", None)
        parts.append(schema.part("migrate", sc, rows))
        from vballoon.realguest_cli import demo_section  # issue 9: boot a real guest

        real: dict[str, Any] = {}
        demo_section(out, real)
        if real.get("real_guest"):
            parts.append(schema.part("real_guest", {}, real["real_guest"]))
    if len(parts) == 1:
        command = " ".join(filter(None, [args.command, getattr(args, "bench", None)]))
        doc = schema.document(command, "virtq", parts[0]["scenario"], parts[0]["rows"])
    else:
        doc = schema.document("demo", "demo", vars_of(args), [], parts=parts)
    output.emit(args, doc)
    return 0


def vars_of(args: argparse.Namespace) -> dict[str, Any]:
    """The command's parameters, for a document's scenario."""
    return {k: v for k, v in vars(args).items() if not callable(v)}


def cmd_bench_virtq(args: argparse.Namespace) -> int:
    """`vballoon bench virtq`: ring round trips per second."""
    args.ring_only = True
    return cmd_demo(args)


def cmd_bench_huge(args: argparse.Namespace) -> int:
    """`vballoon bench huge`: bench I4 on THP and hugetlbfs RAM."""
    what = f"I4: populating and inflating {args.inflate} of {args.guest} on {args.backings}"
    with progress.status(what, output.quiet(args)):
        table = _native.bench_huge_table(
            args.guest,
            args.inflate,
            rounds=args.rounds,
            backings=args.backings.split(","),
            fragmented=not args.no_fragmented,
            reserve=not args.no_reserve,
        )
    sc, rows = output.table_parts(table)
    cells = [report.huge_cells(r) for r in rows]
    output.console_for(args).print(output.table(report.huge_title(sc), report.HUGE_COLUMNS, cells))
    output.emit(args, schema.document("bench huge", "huge", sc, rows))
    return 0


def cmd_bench_inflate(args: argparse.Namespace) -> int:
    """`vballoon bench inflate`: every encoding and discard policy against the floors."""
    table = _bench(
        args,
        _native.bench_inflate_table,
        args.guest,
        args.inflate,
        rounds=args.rounds,
        fragmentation=args.fragmentation,
        mode=args.mode,
        backing=args.backing,
    )
    output.console_for(args).print(inflate_table(table))
    sc = output.inflate_scenario(table, args.mode, args.backing)
    output.emit(args, schema.document("bench inflate", "inflate", sc, output.table_parts(table)[1]))
    return 0


def cmd_bench_migrate(args: argparse.Namespace) -> int:
    """`vballoon bench migrate`: scenarios M1-M3 with and without hints."""
    scenarios = args.scenarios.split(",")
    variants = args.variants.split(",") if args.variants else None
    rows = _bench(
        args,
        _native.bench_migrate_rows,
        scenarios,
        variants,
        guest=args.guest,
        repetitions=args.repetitions,
        bandwidth=args.bandwidth,
        dirty_rate=args.dirty_rate,
    )
    rows = [r.to_dict() for r in rows]
    output.console_for(args).print(migrate_table(rows, f"Live migration at {args.bandwidth}"))
    sc = output.migrate_scenario(
        scenarios, variants, args.guest, args.repetitions, args.bandwidth, args.dirty_rate
    )
    output.emit(args, schema.document("bench migrate", "migrate", sc, rows))
    return 0


def read_key(path: str | None) -> bytes | None:
    """The pre-shared key in `path`, less trailing whitespace (as the Rust side reads it)."""
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read().rstrip(b" \t\n\r\x0c")


def cmd_migrate_listen(args: argparse.Namespace) -> int:
    """`vballoon migrate listen`: receive one guest; exit 1 if a used page differs."""
    # On stdout without --json (scripts wait for this line), else on stderr.
    where = sys.stderr if args.json else sys.stdout
    print(
        f"listening on {args.address} for a {args.size} guest ({args.backing})",
        file=where,
        flush=True,
    )
    with progress.status(f"waiting for the source on {args.address}", output.quiet(args)):
        dest = _native.listen_migration(
            args.address,
            args.size,
            backing=args.backing,
            timeout=args.timeout,
            key=read_key(args.key_file),
            insecure=args.insecure,
            deadline=args.deadline,
        )
    # Without the source's verify trailer there is nothing to say about verified pages.
    row = {k: v for k, v in dest.to_dict().items() if v is not None}
    if args.json:
        sc = {"address": args.address, "guest_bytes": _native.parse_size(args.size)}
        sc["backing"] = args.backing
        output.emit(args, schema.document("migrate listen", "migrate_listen", sc, [row]))
    else:
        # One bare JSON line: scripts wait on it (the schema document needs --json).
        print(json.dumps(row))
    return 0 if dest.mismatched_pages in (0, None) else 1


def cmd_migrate_send(args: argparse.Namespace) -> int:
    """`vballoon migrate send`: build a guest and migrate it; the document on stdout."""
    key = read_key(args.key_file)
    with progress.status("building the guest", output.quiet(args)):
        guest = _native.Guest(
            args.size, scenario=args.scenario, used=args.used, backing=args.backing
        )
    console.print(f"source: {guest!r}")
    result = progress.run_migration(
        guest,
        lambda: guest.migrate(
            to=args.to,
            hints=args.hints,
            bandwidth=args.bandwidth,
            downtime=args.downtime,
            dirty_rate=args.dirty_rate,
            skip_unpopulated=args.skip_unpopulated,
            dirty_tracking=args.dirty_tracking,
            timeout=args.timeout,
            key=key,
        ),
        output.quiet(args),
    )
    args.json = True  # the document is this command's output
    output.emit(args, output.send_document(args, guest, result))
    return 0 if result.mismatched_pages in (0, None) else 1


def _add_inflate_sizes(p: argparse.ArgumentParser, guest: str, inflate: str, why: str) -> None:
    """`--guest`, `--inflate` and `--rounds` of an inflate measurement."""
    p.add_argument("--guest", default=guest, help=f"guest size {why}")
    p.add_argument("--inflate", default=inflate, help=f"how much of it to inflate {why}")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")


def build_parser() -> argparse.ArgumentParser:
    """The `vballoon` command line."""
    p = argparse.ArgumentParser(
        prog="vballoon",
        description="virtio-balloon fast (de)inflation and free-page-hinted live migration",
    )
    p.add_argument("--version", action="version", version=f"vballoon {_native.__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the main demo: rings, inflate comparison, migration")
    demo.add_argument("--ring-guest", default="1GiB", help="guest size for the ring demo")
    demo.add_argument("--buffers", type=int, default=1_000_000, help="buffers through the ring")
    _add_inflate_sizes(demo, "2GiB", "1792MiB", "for the inflate comparison")
    demo.add_argument("--migrate-guest", default="1GiB", help="guest size for the migrations")
    demo.add_argument("--ring-only", action="store_true", help="only the ring demo")
    output.add_options(demo)
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="bench", required=True)
    bv = bsub.add_parser("virtq", help="ring round trips per second")
    bv.add_argument("--ring-guest", default="1GiB")
    bv.add_argument("--buffers", type=int, default=1_000_000)
    output.add_options(bv)
    bv.set_defaults(func=cmd_bench_virtq)
    bi = bsub.add_parser("inflate", help="inflate/deflate: pfn vs bitmap vs extents vs auto")
    _add_inflate_sizes(bi, "8GiB", "7GiB", "(the seed's sizes)")
    bi.add_argument("--fragmentation", type=float, default=None, help="0 (none) to 1 (pages)")
    bi.add_argument("--mode", default="sync", choices=CHOICES["mode"])
    bi.add_argument("--backing", default="anonymous", choices=CHOICES["backing"])
    output.add_options(bi)
    bi.set_defaults(func=cmd_bench_inflate)
    bh = bsub.add_parser("huge", help="I4: inflate on THP and hugetlbfs RAM, memory back verified")
    _add_inflate_sizes(bh, "8GiB", "7GiB", "(I4's sizes)")
    bh.add_argument("--backings", default="thp,hugetlb", help="comma list of thp, hugetlb")
    bh.add_argument("--no-fragmented", action="store_true", help="skip the fragmented guest")
    bh.add_argument(
        "--no-reserve", action="store_true", help="do not raise nr_hugepages for the run"
    )
    output.add_options(bh, plot=False)
    bh.set_defaults(func=cmd_bench_huge)
    bm = bsub.add_parser("migrate", help="live migration with and without hints (M1-M3)")
    bm.add_argument("--scenarios", default="m1,m2", help="comma list of m1, m2, m3")
    bm.add_argument(
        "--variants", default=None, help="comma list: off, skip, bitmap, upstream, reporting"
    )
    bm.add_argument("--guest", default=None, help="scale the scenarios to this guest size")
    bm.add_argument("--repetitions", type=int, default=3)
    bm.add_argument("--bandwidth", default="10Gbit")
    bm.add_argument("--dirty-rate", default=None, help="guest workload writes per second")
    output.add_options(bm)
    bm.set_defaults(func=cmd_bench_migrate)
    from vballoon.realguest_cli import add_bench_parser

    add_bench_parser(bsub)

    mig = sub.add_parser("migrate", help="live migration between two processes over TCP")
    msub = mig.add_subparsers(dest="side", required=True)
    ml = msub.add_parser("listen", help="the destination: receive one guest")
    ml.add_argument("--address", default="127.0.0.1:4444")
    ml.add_argument("--size", required=True, help="guest RAM size, as the source's")
    ml.add_argument("--backing", default="memfd", choices=CHOICES["backing"])
    ml.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
    output.add_options(ml, plot=False)
    ml.add_argument("--key-file", default=None, help="pre-shared key the source must hold")
    ml.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback address without a key"
    )
    ml.add_argument("--deadline", type=float, default=3600.0, help="seconds for the whole run")
    ml.set_defaults(func=cmd_migrate_listen)
    ms = msub.add_parser("send", help="the source: build a guest and migrate it")
    ms.add_argument("--to", default="127.0.0.1:4444", help="the destination's host:port")
    ms.add_argument("--size", default=None, help="guest RAM size (default: the scenario's)")
    ms.add_argument("--scenario", default=None, choices=CHOICES["scenario"])
    ms.add_argument("--used", default="400MiB", help="bytes the guest uses (no scenario)")
    ms.add_argument("--backing", default="memfd", choices=CHOICES["backing"])
    ms.add_argument("--hints", default="off", choices=CHOICES["hints"])
    ms.add_argument("--bandwidth", default="10Gbit")
    ms.add_argument("--downtime", default="300ms")
    ms.add_argument("--dirty-rate", default=None, help="workload writes per second")
    ms.add_argument("--skip-unpopulated", action="store_true")
    ms.add_argument("--dirty-tracking", default="explicit", choices=CHOICES["dirty_tracking"])
    ms.add_argument("--timeout", type=float, default=30.0)
    ms.add_argument("--quiet", action="store_true", help="no progress bar")
    ms.add_argument("--plot", metavar="FILE", type=output.plot_path, help="save the timeline")
    ms.add_argument("--key-file", default=None, help="pre-shared key (as the listener's)")
    ms.set_defaults(func=cmd_migrate_send)
    output.add_report_parser(sub)

    from vballoon import serve  # the vhost-user backend and its API (issue 9)

    serve.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; typed errors become a message on stderr and exit status 1."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (_native.VBalloonError, OSError) as e:
        console.print(f"[red]error:[/red] {type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
