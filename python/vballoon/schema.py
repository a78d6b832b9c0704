"""The one JSON document every measurement is saved as (`--json`, `vballoon report`).

A document (schema version 1, described in `docs/json-schema.md`)::

    {
      "schema": "vballoon.results", "schema_version": 1,
      "command": "bench inflate",         # the CLI command that measured it
      "kind": "inflate",                  # what the rows are: see KINDS
      "date": "2026-11-30T05:40:00+00:00",
      "machine": {"hostname": ..., "kernel": ..., "cpus": 2, ...},
      "scenario": {...},                  # the parameters, sizes in bytes
      "rows": [{...}, ...],               # one dict per measured thing
      "parts": [{"kind": ..., "scenario": ..., "rows": ...}, ...]   # only in kind "demo"
    }

Rows are the `to_dict()` of the native results (`bench_inflate_table(...).rows`,
`bench_migrate_rows(...)`, `pump_queue(...)`, `MigrationResult.per_round`), so a script that
calls the Python API and the CLI's `--json` write the same data.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from vballoon import _native

SCHEMA = "vballoon.results"
SCHEMA_VERSION = 1

# For each kind: the keys every row must have, with the JSON types they may take.
_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
ROW_KEYS: dict[str, dict[str, tuple[type, ...]]] = {
    "virtq": {
        "threads": (int,),
        "segments": (int,),
        "buffers_per_second": _NUM,
        "kicks": _NUM,
        "interrupts": _NUM,
        "seconds": _NUM,
    },
    "inflate": {
        "name": (str,),
        "encoding": (str, type(None)),
        "discard": (str,),
        "inflate_secs": _NUM,
        "alloc_secs": _NUM,
        "encode_send_secs": _NUM,
        "decode_secs": _NUM,
        "discard_secs": _NUM,
        "buffers": (int,),
        "discard_calls": (int,),
        "rss_drop_bytes": (int,),
        "ratio_to_pfn": _NUM,
        "ratio_to_floor": _NUM,
    },
    "migrate": {
        "scenario": (str,),
        "variant": (str,),
        "skipped": (str, type(None)),
        "guest_bytes": (int,),
        "used_bytes": (int,),
        "total_ms": _NUM,
        "bytes_sent": (int,),
        "floor_ms": _NUM,
        "ratio_to_floor": _NUM,
        "speedup_vs_no_hints": _OPT_NUM,
    },
    "migrate_send": {
        "round": (int,),
        "stop_and_copy": (bool,),
        "pages_in_bitmap": (int,),
        "data_pages": (int,),
        "bytes_sent": (int,),
        "secs": _NUM,
        "dirty_after": (int,),
    },
    "migrate_listen": {"guest_bytes": (int,), "bytes_received": (int,), "total_secs": _NUM},
    "real_guest": {"step": (str,), "ms": _NUM},
    "huge": {
        "backing": (str,),
        "variant": (str,),
        "secs": _NUM,
        "ballooned_bytes": (int,),
        "returned_bytes": (int,),
        "gib_per_s": _NUM,
        "ratio_to_floor": _NUM,
        "verified": (bool,),
    },
}
KINDS = (*ROW_KEYS, "demo")
_TOP_KEYS: dict[str, tuple[type, ...]] = {
    "schema": (str,),
    "schema_version": (int,),
    "command": (str,),
    "kind": (str,),
    "date": (str,),
    "machine": (dict,),
    "scenario": (dict,),
    "rows": (list,),
}


class SchemaError(ValueError):
    """A document that does not follow the schema; `problems` lists every violation."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def _first_line(path: str, prefix: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def machine_info() -> dict[str, Any]:
    """What ran the measurement: host, kernel, CPUs, memory, versions."""
    mem_kb = _first_line("/proc/meminfo", "MemTotal")
    return {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "cpu_model": _first_line("/proc/cpuinfo", "model name") or platform.processor(),
        "cpus": os.cpu_count() or 0,
        "memory_bytes": int(mem_kb.split()[0]) * 1024 if mem_kb else 0,
        "python": platform.python_version(),
        "vballoon": _native.__version__,
    }


def now() -> str:
    """The current time, UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def document(
    command: str,
    kind: str,
    scenario: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    *,
    parts: Sequence[Mapping[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A schema document for one measurement (`parts`: the sub-results of a demo)."""
    if kind not in KINDS:
        raise SchemaError([f"kind must be one of {', '.join(KINDS)}, not {kind!r}"])
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "kind": kind,
        "date": now(),
        "machine": machine_info(),
        "scenario": dict(scenario),
        "rows": [dict(r) for r in rows],
    }
    if parts is not None:
        doc["parts"] = [dict(p) for p in parts]
    doc.update(extra)
    return doc


def part(kind: str, scenario: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> dict:
    """One part of a demo document: a kind, its scenario and its rows."""
    return {"kind": kind, "scenario": dict(scenario), "rows": [dict(r) for r in rows]}


def parts(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The measurements a document holds: its parts (a demo), or itself."""
    return list(doc["parts"]) if doc.get("kind") == "demo" else [doc]


def _check_rows(where: str, kind: str, rows: Any, problems: list[str]) -> None:
    if kind not in ROW_KEYS:
        problems.append(f"{where}: unknown kind {kind!r}")
        return
    if not isinstance(rows, list):
        problems.append(f"{where}: rows must be a list")
        return
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            problems.append(f"{where}.rows[{i}]: not an object")
            continue
        for key, types in ROW_KEYS[kind].items():
            if key not in row:
                problems.append(f"{where}.rows[{i}]: missing {key!r}")
            # bool is an int in Python; only "bool" columns may hold one.
            elif not isinstance(row[key], types) or (
                isinstance(row[key], bool) and bool not in types
            ):
                problems.append(f"{where}.rows[{i}].{key}: {type(row[key]).__name__}")


def validate(doc: Any) -> dict[str, Any]:
    """Checks `doc` against the schema; returns it, or raises SchemaError listing problems."""
    if not isinstance(doc, dict):
        raise SchemaError(["a document is a JSON object"])
    problems: list[str] = []
    for key, types in _TOP_KEYS.items():
        if key not in doc:
            problems.append(f"missing {key!r}")
        elif not isinstance(doc[key], types):
            problems.append(f"{key}: {type(doc[key]).__name__}")
    if problems:
        raise SchemaError(problems)
    if doc["schema"] != SCHEMA:
        problems.append(f"schema: {doc['schema']!r}, not {SCHEMA!r}")
    if doc["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version {doc['schema_version']}: this reads {SCHEMA_VERSION}")
    try:
        datetime.datetime.fromisoformat(doc["date"])
    except ValueError:
        problems.append(f"date: {doc['date']!r} is not ISO 8601")
    for key in ("hostname", "kernel", "cpus"):
        if key not in doc["machine"]:
            problems.append(f"machine: missing {key!r}")
    if doc["kind"] == "demo":
        if not isinstance(doc.get("parts"), list) or not doc["parts"]:
            problems.append("a demo document needs a non-empty 'parts' list")
        else:
            for i, p in enumerate(doc["parts"]):
                if not isinstance(p, dict) or not isinstance(p.get("scenario"), dict):
                    problems.append(f"parts[{i}]: needs kind, scenario and rows")
                    continue
                _check_rows(f"parts[{i}]", p.get("kind", ""), p.get("rows"), problems)
    else:
        _check_rows("document", doc["kind"], doc["rows"], problems)
    if problems:
        raise SchemaError(problems)
    return doc


def dumps(doc: Mapping[str, Any]) -> str:
    """The document as JSON text (validated first, so nothing invalid is ever written)."""
    return json.dumps(validate(dict(doc)), indent=2)


def load(path: str) -> dict[str, Any]:
    """Reads and validates a saved document."""
    with open(path, encoding="utf-8") as f:
        return validate(json.load(f))
