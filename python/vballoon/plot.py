"""Figures of saved measurements (schema documents), drawn with matplotlib's Agg canvas.

matplotlib is the optional extra `vballoon[plot]`. Figures are built on `Figure` objects, never
through pyplot, so nothing opens a display or changes the caller's backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vballoon.schema import parts

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FORMATS = ("png", "svg")
STAGES = (
    ("alloc_secs", "guest alloc"),
    ("encode_send_secs", "encode + send"),
    ("decode_secs", "decode"),
    ("discard_secs", "discard"),
)
GiB = 1 << 30
# One page as a data record on the migration stream (header + 4 KiB): the link floor's unit.
DATA_RECORD_BYTES = 4104
PAGE_BYTES = 4096


class PlotError(RuntimeError):
    """A figure that cannot be drawn: matplotlib missing, or an unknown file format."""


def _figure_class() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotError(
            "plots need matplotlib: pip install 'vballoon[plot]' (or pip install matplotlib)"
        ) from e
    return Figure


def _size(n: float) -> str:
    v, unit = (n / GiB, "GiB") if n >= GiB else (n / (1 << 20), "MiB")
    return f"{v:g} {unit}" if v == int(v) else f"{v:.1f} {unit}"


def _ms(secs: float) -> str:
    ms = secs * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"


def caption(doc: Mapping[str, Any]) -> str:
    """Who measured it: command, machine, date."""
    m = doc.get("machine", {})
    mem = m.get("memory_bytes") or 0
    return (
        f"vballoon {doc.get('command', '?')} on {m.get('hostname', '?')} "
        f"({m.get('cpus', '?')} CPUs, {_size(mem) if mem else '?'} RAM, "
        f"kernel {m.get('kernel', '?')}), {doc.get('date', '?')}"
    )


def draw_inflate(part: Mapping[str, Any], axes: Sequence[Axes]) -> None:
    """Inflate time per variant, stacked by stage, with the floor as a line."""
    ax = axes[0]
    sc = part["scenario"]
    rows = [r for r in part["rows"] if r.get("encoding") is not None]
    names = [r["name"] for r in rows]
    ys = list(range(len(rows)))
    left = [0.0] * len(rows)
    for key, label in STAGES:
        widths = [r[key] * 1e3 for r in rows]
        ax.barh(ys, widths, left=left, label=label)
        left = [a + b for a, b in zip(left, widths)]
    # Whatever the stages do not account for (queue waits, bookkeeping).
    other = [max(r["inflate_secs"] * 1e3 - s, 0.0) for r, s in zip(rows, left)]
    ax.barh(ys, other, left=left, label="other", color="lightgrey")
    floor = sc.get("floor_secs") or 0.0
    if floor > 0:
        ax.axvline(floor * 1e3, color="black", linestyle="--", label="floor")
    for y, r in zip(ys, rows):
        ratio = r.get("ratio_to_floor")
        note = f" {_ms(r['inflate_secs'])} ms"
        if ratio:
            note += f" ({ratio:.2f}x floor)"
        ax.text(r["inflate_secs"] * 1e3, y, note, va="center", fontsize=8)
    ax.set_yticks(ys, labels=names)
    ax.invert_yaxis()
    ax.set_xlabel("inflate time, ms (median)")
    title = (
        f"Inflate {_size(sc['inflate_bytes'])} of a {_size(sc['guest_bytes'])} guest, "
        f"median of {sc.get('rounds', '?')} rounds"
    )
    if sc.get("fragmentation") is not None:
        title += f", fragmentation {sc['fragmentation']}"
    ax.set_title(title, loc="left", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.margins(x=0.25)


def _grouped(
    ax: Axes,
    rows: Sequence[Mapping[str, Any]],
    value: Callable[[Mapping[str, Any]], float],
    floor: Callable[[Mapping[str, Any]], float],
    floor_label: str,
) -> None:
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    width = 0.8 / max(len(variants), 1)
    for j, v in enumerate(variants):
        xs, hs = [], []
        for i, s in enumerate(scenarios):
            r = next((r for r in rows if r["scenario"] == s and r["variant"] == v), None)
            if r is not None and not r.get("skipped"):
                xs.append(i - 0.4 + width * (j + 0.5))
                hs.append(value(r))
        ax.bar(xs, hs, width=width, label=v)
    for i, s in enumerate(scenarios):
        r = next(r for r in rows if r["scenario"] == s)
        ax.hlines(
            floor(r),
            i - 0.4,
            i + 0.4,
            colors="black",
            linestyles="--",
            label=floor_label if i == 0 else "_nolegend_",  # one legend entry for the floors
        )
    ax.set_xticks(range(len(scenarios)), labels=[s.upper() for s in scenarios])
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def draw_migrate(part: Mapping[str, Any], axes: Sequence[Axes]) -> None:
    """Migration time and bytes sent per scenario and variant, with the link floor."""
    rows = part["rows"]
    sc = part["scenario"]
    _grouped(axes[0], rows, lambda r: r["total_ms"], lambda r: r["floor_ms"], "link floor")
    axes[0].set_ylabel("total time, ms (log)")
    sizes = ", ".join(
        f"{r['scenario'].upper()}: {_size(r['guest_bytes'])} guest, {_size(r['used_bytes'])} used"
        for r in {r["scenario"]: r for r in rows}.values()
    )
    axes[0].set_title(
        f"Live migration at {sc.get('bandwidth', '?')} ({sizes})", loc="left", fontsize=10
    )
    _grouped(
        axes[1],
        rows,
        lambda r: r["bytes_sent"] / 1e6,
        lambda r: r["used_bytes"] / PAGE_BYTES * DATA_RECORD_BYTES / 1e6,
        "used pages only",
    )
    axes[1].set_ylabel("bytes sent, MB (log)")


def draw_timeline(part: Mapping[str, Any], axes: Sequence[Axes]) -> None:
    """A migration round by round: bytes sent (bars) and pages dirtied (line)."""
    ax = axes[0]
    rows = part["rows"]
    sc = part["scenario"]
    rounds = [r["round"] for r in rows]
    colors = ["tab:orange" if r["stop_and_copy"] else "tab:blue" for r in rows]
    ax.bar(rounds, [r["bytes_sent"] / 1e6 for r in rows], color=colors, label="MB sent")
    step = max(1, len(rounds) // 20)
    ax.set_xticks(rounds[::step], labels=[str(r) for r in rounds[::step]])
    ax.set_xlabel("round")
    ax.set_ylabel("MB sent")
    twin = ax.twinx()
    twin.plot(
        rounds, [r["dirty_after"] for r in rows], "o-", color="tab:red", label="pages dirtied"
    )
    twin.plot(
        rounds,
        [r["pages_in_bitmap"] for r in rows],
        "s--",
        color="tab:grey",
        label="pages to send",
    )
    if any(r.get("hinted_pages") for r in rows):
        twin.plot(
            rounds,
            [r.get("hinted_pages", 0) for r in rows],
            "^:",
            color="tab:green",
            label="pages hinted free",
        )
    twin.set_ylabel("pages")
    twin.set_ylim(bottom=0)
    from matplotlib.patches import Patch

    handles, names = ax.get_legend_handles_labels()
    handles.append(Patch(color="tab:orange"))
    names.append("MB sent, stop-and-copy")
    more = twin.get_legend_handles_labels()
    ax.legend(handles + more[0], names + more[1], fontsize=8)
    ax.set_title(
        f"Migration of a {_size(sc.get('guest_bytes', 0))} guest, hints {sc.get('hints', '?')}, "
        f"at {sc.get('bandwidth', '?')}: {len(rows)} rounds{_summary(part)}",
        loc="left",
        fontsize=10,
    )


def _summary(part: Mapping[str, Any]) -> str:
    m = part.get("summary")
    if not m:
        return ""
    return (
        f", {m['total_secs'] * 1e3:,.0f} ms, {m['bytes_sent'] / 1e6:,.1f} MB, "
        f"downtime {m['downtime_secs'] * 1e3:,.1f} ms"
    )


def draw_virtq(part: Mapping[str, Any], axes: Sequence[Axes]) -> None:
    """Ring throughput per configuration."""
    ax = axes[0]
    rows = part["rows"]
    sc = part["scenario"]
    labels = [
        f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}, {r['segments']} seg" for r in rows
    ]
    ys = list(range(len(rows)))
    ax.barh(ys, [r["buffers_per_second"] / 1e6 for r in rows], color="tab:green")
    for y, r in zip(ys, rows):
        ax.text(
            r["buffers_per_second"] / 1e6,
            y,
            f" {r['buffers_per_second'] / 1e6:.2f} M/s",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(ys, labels=labels)
    ax.invert_yaxis()
    ax.margins(x=0.2)
    ax.set_xlabel("buffers per second, millions")
    ax.set_title(
        f"Virtqueue round trips: {sc.get('buffers', 0):,} buffers in a "
        f"{_size(sc.get('guest_bytes', 0))} guest",
        loc="left",
        fontsize=10,
    )


# kind: (drawing function, panels, panel height in inches)
DRAW: dict[str, tuple[Callable[[Mapping[str, Any], Sequence[Axes]], None], int, float]] = {
    "inflate": (draw_inflate, 1, 3.8),
    "migrate": (draw_migrate, 2, 3.2),
    "migrate_send": (draw_timeline, 1, 3.4),
    "virtq": (draw_virtq, 1, 2.4),
}


def figure(doc: Mapping[str, Any]) -> Figure:
    """One figure with a panel per measurement in `doc` (a demo gets all of its parts)."""
    figure_class = _figure_class()
    drawable = [p for p in parts(doc) if p["kind"] in DRAW and p["rows"]]
    if not drawable:
        raise PlotError(f"nothing to plot in a {doc.get('kind')!r} document")
    heights = [DRAW[p["kind"]][2] for p in drawable for _ in range(DRAW[p["kind"]][1])]
    fig = figure_class(figsize=(10, sum(heights) + 0.8), layout="constrained")
    axes = fig.subplots(len(heights), 1, squeeze=False, height_ratios=heights)[:, 0]
    i = 0
    for p in drawable:
        draw, n, _ = DRAW[p["kind"]]
        draw(p, list(axes[i : i + n]))
        i += n
    fig.suptitle(caption(doc), fontsize=9, x=0.01, ha="left")
    return fig


def check(path: str | Path) -> str:
    """The format of `path` (from its suffix), once matplotlib is known to be there."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise PlotError(f"plot file must end in .png or .svg, not {Path(path).name!r}")
    _figure_class()
    return fmt


def save(doc: Mapping[str, Any], path: str | Path) -> Path:
    """Draws `doc` into `path`; the format (PNG or SVG) comes from its suffix."""
    path = Path(path)
    fmt = check(path)
    fig = figure(doc)
    fig.savefig(path, format=fmt, dpi=110)
    return path


def labels(fig: Figure) -> set[str]:
    """Every label a reader sees: tick labels, legend entries and titles (for tests)."""
    out: set[str] = set()
    for ax in fig.axes:
        out.update(t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels())
        legend = ax.get_legend()
        if legend is not None:
            out.update(t.get_text() for t in legend.get_texts())
        out.add(ax.get_title(loc="left"))
    return {s for s in out if s}
