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
    out = []
    for r in part["rows"]:
        if r.get("skipped"):
            out.append([r["scenario"], r["variant"], f"skipped: {r['skipped']}"] + [""] * 6)
            continue
        sp = r.get("speedup_vs_no_hints")
        out.append(
            [
                r["scenario"],
                r["variant"],
                f"{r['total_ms']:,.0f}",
                f"{r['bytes_sent'] / 1e6:,.1f}",
                f"{r.get('hinted_pages', 0):,}",
                f"{r.get('downtime_ms', 0):.1f}",
                f"{r['floor_ms']:,.0f}",
                f"{r['ratio_to_floor']:.2f}",
                f"{sp:.2f}x" if sp else "-",
            ]
        )
    sc = part["scenario"]
    head = f"Live migration at {sc.get('bandwidth', '?')}, median of {sc.get('repetitions')} runs."
    cols = ["scenario", "variant", "time ms", "sent MB", "hinted pages", "downtime ms"]
    cols += ["floor ms", "/ floor", "speed-up"]
    return [head, "", *_md_table(cols, out)]


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
    """Timed steps (a real guest's boot, inflate, deflate; the huge-page bench's variants)."""
    rows = [
        [
            r.get("step") or f"{r['backing']} {r['variant']}",
            f"{r.get('ms', r.get('secs', 0) * 1e3):,.1f}",
        ]
        for r in part["rows"]
    ]
    return _md_table(["step", "ms"], rows)


MARKDOWN = {
    "huge": steps_markdown,
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
