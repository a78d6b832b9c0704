"""The command line's real-guest parts: `vballoon bench real-guest` (R1, R2) and the demo's
real-guest table (run when User-Mode Linux is in the cache)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console

from vballoon import _native, output, progress, schema

MIB = 1 << 20


def demo_section(console: Console, result: dict[str, Any]) -> None:
    """Boot a real guest against the backend and show its steps, if UML is fetched."""
    from vballoon.uml import cached

    uml = cached()
    if uml is None or not hasattr(_native, "VhostUserBackend"):
        console.print(
            "Real guest: skipped (User-Mode Linux is not fetched; "
            "`python -m vballoon.uml fetch` downloads it once)"
        )
        return
    from vballoon.realguest import demo

    rows = [r.to_dict() for r in demo(uml)]
    console.print(
        output.table(
            f"A real Linux guest (User-Mode Linux {uml.version}, its own virtio_balloon driver) "
            "on the vhost-user backend",
            ["step", "ms", "MemTotal MiB", "RAM file MiB", "buffers", "discards", "stats"],
            [
                [
                    r["step"],
                    f"{r['ms']:,.1f}",
                    f"{r['memtotal_mib']:,.0f}",
                    f"{r['ram_file_mib']:,.0f}",
                    r.get("buffers", ""),
                    r.get("discards", ""),
                    (
                        f"free {r['free_mib']:,.0f} MiB, available {r['available_mib']:,.0f} MiB"
                        if "free_mib" in r
                        else ""
                    ),
                ]
                for r in rows
            ],
        )
    )
    result["real_guest"] = rows


def add_bench_parser(bsub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The `bench real-guest` subcommand."""
    p = bsub.add_parser(
        "real-guest", help="R1/R2: a UML guest's own driver against the vhost-user backend"
    )
    p.add_argument("--guest-mib", type=int, default=2048)
    p.add_argument("--inflate-mib", type=int, default=1536)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", choices=["r1", "r2"], default=None)
    output.add_options(p, plot=False)
    p.set_defaults(func=cmd_bench_real_guest)


def cmd_bench_real_guest(args: argparse.Namespace) -> int:
    """`vballoon bench real-guest`: R1 and R2 on a User-Mode Linux guest."""
    from vballoon.realguest import bench_r1, bench_r2
    from vballoon.uml import fetch

    console = output.console_for(args)
    uml = fetch()
    out: dict[str, Any] = {"uml": uml.version}
    if args.only in (None, "r1"):
        what = f"R1: booting a {args.guest_mib} MiB guest, inflating {args.inflate_mib} MiB"
        with progress.status(what, output.quiet(args)):
            r1 = bench_r1(uml, args.guest_mib, args.inflate_mib, args.rounds).to_dict()
        out["r1"] = r1
        rows = []
        for i, s in enumerate(r1["real"]):
            inf = s["inflate"]
            rows.append(
                [
                    f"real driver, round {i + 1}",
                    f"{inf['secs'] * 1e3:,.1f}",
                    f"{inf['inflate_buffers']:,}",
                    f"{inf['discard_calls']:,}",
                    f"{inf['blocks_returned_bytes'] / MIB:,.1f}",
                    f"{inf['memtotal_drop_bytes'] / MIB:,.1f}",
                    f"{s['deflate']['secs'] * 1e3:,.1f}",
                    f"{inf['guest_cpu_secs'] * 1e3:,.0f} / {inf['backend_cpu_secs'] * 1e3:,.0f}",
                ]
            )
        for r in r1["model_rows"]:
            if r["name"] in (
                "pfn",
                "pfn+coalesce",
                "floor: one discard",
                "floor: per-page discard",
            ):
                rows.append(
                    [
                        f"model: {r['name']}",
                        f"{r['inflate_secs'] * 1e3:,.1f}",
                        f"{r['buffers']:,}",
                        f"{r['discard_calls']:,}",
                        f"{r['rss_drop_bytes'] / MIB:,.1f}",
                        "-",
                        f"{r['deflate_secs'] * 1e3:,.1f}",
                        "-",
                    ]
                )
        console.print(
            output.table(
                f"R1: inflate {args.inflate_mib} MiB of a {args.guest_mib} MiB guest "
                f"(median real {r1['real_inflate_secs'] * 1e3:,.1f} ms = "
                f"{r1['ratio_to_model_pfn']:.2f}x model pfn, "
                f"{r1['ratio_to_model_pfn_coalesce']:.2f}x model pfn+coalesce, "
                f"{r1['ratio_to_floor']:.2f}x floor)",
                [
                    "variant",
                    "inflate ms",
                    "buffers",
                    "discard calls",
                    "returned MiB",
                    "MemTotal drop MiB",
                    "deflate ms",
                    "CPU ms guest / backend",
                ],
                rows,
            )
        )
    if args.only in (None, "r2"):
        with progress.status("R2: hint runs and free page reporting", output.quiet(args)):
            r2 = bench_r2(uml, args.guest_mib, args.rounds).to_dict()
        out["r2"] = r2
        rows = [
            [
                f"hint run {i + 1}",
                f"{h['secs'] * 1e3:,.1f}",
                f"{h['pages_hinted'] * 4096 / MIB:,.0f}",
                f"{h['guest_free_bytes'] / MIB:,.0f}",
            ]
            for i, h in enumerate(r2["hints"])
        ]
        rows += [
            [
                f"reporting {i + 1}: {r['freed_mib']} MiB freed",
                f"{r['secs_to_90pct_discarded'] * 1e3:,.1f}",
                f"{r['pages_reported'] * 4096 / MIB:,.0f}",
                f"{r['blocks_returned_bytes'] / MIB:,.0f} returned",
            ]
            for i, r in enumerate(r2["reports"])
        ]
        console.print(
            output.table(
                f"R2: a {args.guest_mib} MiB guest: hint runs (new cmd id -> STOP; median "
                f"{r2['hint_ms_per_gib_guest']:,.1f} ms per GiB of guest) and reporting "
                "(free -> 90% discarded on the host)",
                ["run", "ms", "hinted/reported MiB", "guest free MiB / host"],
                rows,
            )
        )
    doc_rows: list[dict[str, Any]] = []
    for i, s in enumerate(out.get("r1", {}).get("real", [])):
        doc_rows.append(
            {"step": f"r1: real driver, round {i + 1}", "ms": s["inflate"]["secs"] * 1e3}
        )
    for r in out.get("r1", {}).get("model_rows", []):
        doc_rows.append({"step": f"r1: model {r['name']}", "ms": r["inflate_secs"] * 1e3})
    for i, h in enumerate(out.get("r2", {}).get("hints", [])):
        doc_rows.append({"step": f"r2: hint run {i + 1}", "ms": h["secs"] * 1e3})
    for i, r in enumerate(out.get("r2", {}).get("reports", [])):
        doc_rows.append(
            {"step": f"r2: reporting {i + 1}", "ms": r["secs_to_90pct_discarded"] * 1e3}
        )
    scenario = {"guest_mib": args.guest_mib, "inflate_mib": args.inflate_mib, "uml": uml.version}
    detail = json.loads(json.dumps(out, default=str))
    output.emit(
        args, schema.document("bench real-guest", "real_guest", scenario, doc_rows, detail=detail)
    )
    return 0
