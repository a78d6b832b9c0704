"""`vballoon report`: saved `--json` documents into figures and a Markdown summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vballoon import plot
from vballoon.schema import load, parts


def _ms(secs: float) -> str:
    return f"{secs * 1e3:,.1f}"


# The inflate and ring tables' columns and cells, shared by the CLI's tables and these reports.
INFLATE_COLUMNS = ["variant", "inflate ms", "alloc", "encode+send", "decode", "discard"]
INFLATE_COLUMNS += ["buffers", "discards", "RSS drop MiB", "/ pfn", "/ floor"]
VIRTQ_COLUMNS = ["threads", "segments", "buffers/s", "kicks", "interrupts", "seconds"]


def inflate_cells(r: Mapping[str, Any]) -> list[str]:
    """One inflate row (a `bench_inflate_table` row) as table cells."""
    return [
        r["name"],
        _ms(r["inflate_secs"]),
        _ms(r["alloc_secs"]),
        _ms(r["encode_send_secs"]),
        _ms(r["decode_secs"]),
        _ms(r["discard_secs"]),
        f"{r['buffers']:,}",
        f"{r['discard_calls']:,}",
        f"{r['rss_drop_bytes'] / (1 << 20):,.0f}",
        f"{r['ratio_to_pfn']:.3f}" if r["ratio_to_pfn"] else "-",
        f"{r['ratio_to_floor']:.2f}" if r["ratio_to_floor"] else "-",
    ]


def virtq_cells(r: Mapping[str, Any]) -> list[Any]:
    """One ring-throughput row as table cells."""
    return [
        r["threads"],
        r["segments"],
        f"{r['buffers_per_second'] / 1e6:.2f} M",
        f"{int(r['kicks']):,}",
        f"{int(r['interrupts']):,}",
        f"{r['seconds']:.3f}",
    ]


MIGRATE_COLUMNS = ["scenario", "variant", "time ms", "sent MB", "pages read", "hinted"]
MIGRATE_COLUMNS += ["unpopulated", "downtime ms", "peak RSS MB", "floor ms", "/ floor"]
MIGRATE_COLUMNS += ["speed-up", "verified"]


def migrate_cells(r: Mapping[str, Any]) -> list[str]:
    """One migration bench row (a `MigrateRow.to_dict()`) as table cells."""
    head = [r["scenario"], r["variant"]]
    if r.get("skipped"):
        return [*head, f"skipped: {r['skipped']}"] + [""] * (len(MIGRATE_COLUMNS) - 3)
    speedup = r.get("speedup_vs_no_hints")
    return [
        *head,
        f"{r['total_ms']:,.0f}",
        f"{r['bytes_sent'] / 1e6:,.1f}",
        f"{r.get('pages_read', 0):,}",
        f"{r.get('hinted_pages', 0):,}",
        f"{r.get('unpopulated_pages', 0):,}",
        f"{r.get('downtime_ms', 0):.1f}",
        f"{r.get('peak_rss_bytes', 0) / 1e6:,.0f}",
        f"{r['floor_ms']:,.0f}",
        f"{r['ratio_to_floor']:.2f}",
        f"{speedup:.2f}x" if speedup else "-",
        {True: "yes", False: "NO", None: "-"}[r.get("verified")],
    ]


HUGE_COLUMNS = ["backing", "variant", "s", "ballooned GiB", "returned GiB", "GiB/s"]
HUGE_COLUMNS += ["vs floor", "discard calls", "huge before", "MemFree gain GiB"]
HUGE_COLUMNS += ["THPs partly mapped", "verified"]


def huge_cells(r: Mapping[str, Any]) -> list[str]:
    """One huge-page bench row (a `HugeRow.to_dict()`) as table cells."""
    gib = float(1 << 30)
    if r.get("note"):
        return [r["backing"], r["variant"], r["note"]] + [""] * (len(HUGE_COLUMNS) - 3)
    return [
        r["backing"],
        r["variant"],
        f"{r['secs']:.3f}",
        f"{r['ballooned_bytes'] / gib:.2f}",
        f"{r['returned_bytes'] / gib:.2f}",
        f"{r['gib_per_s']:.1f}",
        f"{r['ratio_to_floor']:.2f}",
        f"{r['discard_calls']:,}",
        f"{r['huge_share_before'] * 100:.0f}%",
        f"{r['memfree_gain_bytes'] / gib:.2f}",
        f"{r['thp_partially_mapped']:,}",
        "yes" if r["verified"] else "NO",
    ]


def huge_title(sc: Mapping[str, Any]) -> str:
    """The huge-page bench's caption."""
    gib = float(1 << 30)
    return (
        f"I4: inflate {sc['inflate_bytes'] / gib:.2f} of {sc['guest_bytes'] / gib:.2f} GiB on "
        f"huge-page RAM, all touched; medians of {sc['rounds']} rounds"
    )


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def inflate_markdown(part: Mapping[str, Any]) -> list[str]:
    """The inflate comparison: time, stages, ratios to pfn and to the floor."""
    sc = part["scenario"]
    rows = [inflate_cells(r) for r in part["rows"]]
    head = (
        f"Inflate {sc['inflate_bytes'] / 2**30:.2f} GiB of a {sc['guest_bytes'] / 2**30:.2f} GiB "
        f"guest ({sc.get('mode', 'sync')}, {sc.get('backing', 'anonymous')}), median of "
        f"{sc.get('rounds', '?')} rounds; floor {_ms(sc.get('floor_secs') or 0)} ms."
    )
    return [head, "", *_md_table(INFLATE_COLUMNS, rows)]


def migrate_markdown(part: Mapping[str, Any]) -> list[str]:
    """Migration rows: time, bytes, pages, downtime, floor, speed-up."""
    rows = [migrate_cells(r) for r in part["rows"]]
    sc = part["scenario"]
    head = f"Live migration at {sc.get('bandwidth', '?')}, median of {sc.get('repetitions')} runs."
    return [head, "", *_md_table(MIGRATE_COLUMNS, rows)]


def timeline_markdown(part: Mapping[str, Any]) -> list[str]:
    """A migration round by round."""
    rows = [
        [
            f"{r['round']}{' (stop-and-copy)' if r['stop_and_copy'] else ''}",
            f"{r['pages_in_bitmap']:,}",
            f"{r['data_pages']:,}",
            f"{r.get('hinted_pages', 0):,}",
            f"{r['bytes_sent'] / 1e6:,.1f}",
            f"{r['secs'] * 1e3:,.1f}",
            f"{r['dirty_after']:,}",
        ]
        for r in part["rows"]
    ]
    cols = ["round", "pages to send", "data pages", "hinted", "MB sent", "ms", "dirtied"]
    head = []
    m = part.get("summary")
    if m:
        head = [
            f"{m['total_secs'] * 1e3:,.0f} ms in {m['rounds']} rounds, "
            f"{m['bytes_sent'] / 1e6:,.1f} MB sent, downtime {m['downtime_secs'] * 1e3:,.1f} ms, "
            f"{m['hinted_pages']:,} pages hinted, verified: {m.get('mismatched_pages') == 0}.",
            "",
        ]
    return [*head, *_md_table(cols, rows)]


def virtq_markdown(part: Mapping[str, Any]) -> list[str]:
    """Ring throughput."""
    return _md_table(VIRTQ_COLUMNS, [virtq_cells(r) for r in part["rows"]])


def steps_markdown(part: Mapping[str, Any]) -> list[str]:
    """Timed steps (a real guest's boot, inflate, deflate)."""
    rows = [[r["step"], f"{r['ms']:,.1f}"] for r in part["rows"]]
    return _md_table(["step", "ms"], rows)


def huge_markdown(part: Mapping[str, Any]) -> list[str]:
    """The huge-page bench (I4): each backing and variant."""
    rows = [huge_cells(r) for r in part["rows"]]
    return [huge_title(part["scenario"]), "", *_md_table(HUGE_COLUMNS, rows)]


MARKDOWN = {
    "huge": huge_markdown,
    "real_guest": steps_markdown,
    "inflate": inflate_markdown,
    "migrate": migrate_markdown,
    "migrate_send": timeline_markdown,
    "virtq": virtq_markdown,
}


def markdown(doc: Mapping[str, Any], image: str | None = None) -> str:
    """A Markdown section for one document: caption, tables, and the figure if drawn."""
    lines = [f"## {doc['command']} ({doc['date']})", "", plot.caption(doc) + ".", ""]
    for p in parts(doc):
        if p["kind"] in MARKDOWN:
            lines += [*MARKDOWN[p["kind"]](p), ""]
    if image:
        lines += [f"![{doc['command']}]({image})", ""]
    return "\n".join(lines)


def report(
    paths: Sequence[str | Path], outdir: str | Path, fmt: str = "png", with_plots: bool = True
) -> Path:
    """Renders each saved document into `outdir`: a figure per file and `summary.md`."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for path in paths:
        doc = load(str(path))
        image = None
        if with_plots:
            image = f"{Path(path).stem}.{fmt}"
            plot.save(doc, out / image)
        sections.append(markdown(doc, image))
    summary = out / "summary.md"
    summary.write_text("# vballoon results\n\n" + "\n".join(sections), encoding="utf-8")
    return summary
