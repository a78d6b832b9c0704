"""What the CLI does with a measurement: tables, `--json` (schema documents), `--plot`.

With `--json`, stdout carries only the JSON document; tables go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from vballoon import _native, schema

if TYPE_CHECKING:
    from vballoon import Guest, InflateTable, MigrationResult

# Tables are wider than 80 columns: keep them whole when the output is a pipe or a file.
_WIDTH = 160


def console_for(args: argparse.Namespace) -> Console:
    """Where tables go: stdout, or stderr when stdout carries JSON."""
    if getattr(args, "json", False):
        return Console(stderr=True, width=None if sys.stderr.isatty() else _WIDTH)
    return Console(width=None if sys.stdout.isatty() else _WIDTH)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    """A rich table: the first column left-aligned, the figures right-aligned."""
    t = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*(str(c) for c in row))
    return t


def quiet(args: argparse.Namespace) -> bool:
    """Whether progress bars are off (`--quiet`)."""
    return bool(getattr(args, "quiet", False))


def add_options(p: argparse.ArgumentParser, plot: bool = True) -> None:
    """`--json`, `--quiet` and (for measurements that have a figure) `--plot FILE`."""
    p.add_argument(
        "--json", action="store_true", help="print only a JSON document on stdout (tables: stderr)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if plot:
        p.add_argument(
            "--plot", metavar="FILE", type=plot_path, help="save a figure (.png or .svg)"
        )


def plot_path(value: str) -> str:
    """A `--plot` argument, checked before a long run rather than after it."""
    from vballoon import plot

    try:
        plot.check(value)
    except plot.PlotError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return value


def emit(args: argparse.Namespace, doc: Mapping[str, Any]) -> None:
    """Writes the document as asked: JSON on stdout (`--json`), a figure (`--plot`)."""
    if getattr(args, "plot", None):
        from vballoon import plot

        path = plot.save(doc, args.plot)
        console_for(args).print(f"figure: {path}")
    if getattr(args, "json", False):
        sys.stdout.write(schema.dumps(doc) + "\n")


def ring_scenario(guest: str, buffers: int) -> dict[str, Any]:
    """The ring demo's parameters."""
    return {"guest_bytes": _native.parse_size(guest), "buffers": buffers}


def table_parts(table: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A bench table's run-wide figures (a document's scenario) and its rows, as dicts."""
    sc = table.to_dict()
    return sc, sc.pop("rows")


def inflate_scenario(table: InflateTable, mode: str, backing: str) -> dict[str, Any]:
    """The inflate bench's parameters and run-wide figures (everything but its rows)."""
    return {**table_parts(table)[0], "mode": mode, "backing": backing}


def migrate_scenario(
    scenarios: Sequence[str],
    variants: Sequence[str] | None,
    guest: str | None,
    repetitions: int,
    bandwidth: str,
    dirty_rate: str | None,
) -> dict[str, Any]:
    """The migration bench's parameters."""
    return {
        "scenarios": list(scenarios),
        "variants": list(variants) if variants else None,
        "guest_bytes": _native.parse_size(guest) if guest else None,
        "repetitions": repetitions,
        "bandwidth": bandwidth,
        "dirty_rate": dirty_rate,
    }


def send_document(
    args: argparse.Namespace, guest: Guest, result: MigrationResult
) -> dict[str, Any]:
    """`migrate send`: the result as the summary, its rounds as the rows."""
    summary = result.to_dict()
    rows = summary.pop("per_round")
    info = guest.info()
    scenario = {
        "to": args.to,
        "scenario": args.scenario,
        "guest_bytes": info.guest_bytes,
        "used_bytes": info.used_bytes,
        "stale_free_bytes": info.stale_free_bytes,
        "hints": args.hints,
        "bandwidth": args.bandwidth,
        "downtime": args.downtime,
        "dirty_rate": args.dirty_rate,
        "dirty_tracking": args.dirty_tracking,
    }
    return schema.document("migrate send", "migrate_send", scenario, rows, summary=summary)


def cmd_report(args: argparse.Namespace) -> int:
    """`vballoon report FILE... -o DIR`."""
    from vballoon.plot import PlotError
    from vballoon.report import report

    try:
        summary = report(args.files, args.output, fmt=args.format, with_plots=not args.no_plots)
    except (OSError, ValueError, PlotError) as e:  # SchemaError and bad JSON are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def add_report_parser(sub: Any) -> None:
    """The `report` subcommand."""
    r = sub.add_parser("report", help="render saved --json results into figures and Markdown")
    r.add_argument("files", nargs="+", help="JSON documents written by --json")
    r.add_argument("-o", "--output", required=True, help="directory for figures and summary.md")
    r.add_argument("--format", default="png", choices=["png", "svg"])
    r.add_argument("--no-plots", action="store_true", help="only the Markdown summary")
    r.set_defaults(func=cmd_report)
