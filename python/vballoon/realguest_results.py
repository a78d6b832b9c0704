"""The real-guest measurements' results (bench R1, R2 and the demo's steps) as typed, frozen
dataclasses; `to_dict()` is the one place they become dicts (for `--json`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vballoon import InflateRow


def _plain(value: Any) -> Any:
    """A value as JSON-able data: results through their `to_dict()`, sequences as lists."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _Result:
    """`to_dict()` for the dataclasses below (native results inside become dicts too)."""

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain data, keyed by the field names; an optional field (default
        None) is left out while unset, so the JSON holds only what was measured."""
        assert dataclasses.is_dataclass(self)
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if not (f.default is None and getattr(self, f.name) is None)
        }


@dataclass(frozen=True)
class BalloonMove(_Result):
    """One move of the balloon by a real guest's driver, timed, and what it cost the host."""

    secs: float
    guest_cpu_secs: float
    backend_cpu_secs: float
    pages: int
    inflate_buffers: int
    deflate_buffers: int
    discard_calls: int
    pages_discarded: int
    blocks_returned_bytes: int
    memtotal_drop_bytes: int | None = None


@dataclass(frozen=True)
class R1Round(_Result):
    """One round of R1: inflate, then deflate back to 0."""

    inflate: BalloonMove
    deflate: BalloonMove


@dataclass(frozen=True)
class R1Result(_Result):
    """R1: the real driver inflating a guest, beside the modelled PFN driver on the same sizes."""

    guest_mib: int
    inflate_mib: int
    rounds: int
    boot_secs: float
    probe_secs: float
    real_inflate_secs: float
    real_deflate_secs: float
    real: list[R1Round]
    model_pfn_secs: float
    model_pfn_coalesce_secs: float
    floor_one_discard_secs: float
    floor_per_page_secs: float
    model_rows: list[InflateRow]
    ratio_to_model_pfn: float
    ratio_to_model_pfn_coalesce: float
    ratio_to_floor: float


@dataclass(frozen=True)
class HintRun(_Result):
    """One free page hinting run: from the new command id to the guest's STOP."""

    secs: float
    cmd_id: int
    pages_hinted: int
    guest_free_bytes: int


@dataclass(frozen=True)
class ReportingRun(_Result):
    """Memory freed in the guest until the host discarded 90% of it (free page reporting)."""

    freed_mib: int
    secs_to_90pct_discarded: float
    pages_reported: int
    blocks_returned_bytes: int
    timeline: list[tuple[float, int, int]]  # (seconds, pages reported, bytes returned)


@dataclass(frozen=True)
class R2Result(_Result):
    """R2: hint runs over an idle guest, and reporting of memory it touched and freed."""

    guest_mib: int
    rounds: int
    hint_secs: float
    hint_ms_per_gib_guest: float
    hints: list[HintRun]
    report_secs: float
    reports: list[ReportingRun]


@dataclass(frozen=True)
class DemoStep(_Result):
    """One step of the demo's real guest: its time, the guest's MemTotal and the RAM file."""

    step: str
    ms: float
    memtotal_mib: float
    ram_file_mib: float
    buffers: int | None = None
    discards: int | None = None
    free_mib: float | None = None
    available_mib: float | None = None
