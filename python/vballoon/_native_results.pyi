"""Stubs of the native result classes (they live in `vballoon._native`; `_native.pyi` imports
them from here to stay short). Results are frozen: their attributes are read-only."""

from typing import Any, final

from vballoon.types import Backing, DiscardPolicy, Encoding, HintMode

@final
class HugetlbPool:
    """The 2 MiB hugetlb pool, in pages."""

    total: int
    free: int
    reserved: int
    surplus: int
    def to_dict(self) -> dict[str, Any]: ...

@final
class HugePageStats:
    """How much of guest RAM is resident and on huge pages."""

    backing: Backing | None
    host_page_size: int
    rss_bytes: int
    huge_bytes: int
    file_allocated_bytes: int | None
    pool: HugetlbPool | None
    def to_dict(self) -> dict[str, Any]: ...

@final
class QueueLayout:
    """Where a queue's three parts sit in guest memory."""

    size: int
    desc_table: int
    avail_ring: int
    used_ring: int
    def to_dict(self) -> dict[str, Any]: ...

@final
class PumpResult:
    """What `pump_queue` measured."""

    buffers: int
    bytes_read: int
    kicks: int
    interrupts: int
    seconds: float
    buffers_per_second: float
    def to_dict(self) -> dict[str, Any]: ...

@final
class InflateReport:
    """One balloon move, measured: where the time went and what it cost."""

    outcome: str
    target_pages: int
    start_pages: int
    end_pages: int
    pages_inflated: int
    pages_deflated: int
    total_secs: float
    alloc_secs: float
    encode_send_secs: float
    decode_secs: float
    discard_secs: float
    buffers: int
    kicks: int
    interrupts: int
    discard_calls: int
    bad_buffers: int
    resident_before: int
    resident_after: int
    def to_dict(self) -> dict[str, Any]: ...

@final
class GuestStats:
    """One statistics sample the guest sent (None: the guest did not send that tag)."""

    @property
    def swap_in(self) -> int | None: ...
    @property
    def swap_out(self) -> int | None: ...
    @property
    def major_faults(self) -> int | None: ...
    @property
    def minor_faults(self) -> int | None: ...
    @property
    def free_memory(self) -> int | None: ...
    @property
    def total_memory(self) -> int | None: ...
    @property
    def available_memory(self) -> int | None: ...
    @property
    def disk_caches(self) -> int | None: ...
    @property
    def hugetlb_allocations(self) -> int | None: ...
    @property
    def hugetlb_failures(self) -> int | None: ...
    @property
    def oom_kills(self) -> int | None: ...
    @property
    def alloc_stalls(self) -> int | None: ...
    @property
    def async_scans(self) -> int | None: ...
    @property
    def direct_scans(self) -> int | None: ...
    @property
    def async_reclaims(self) -> int | None: ...
    @property
    def direct_reclaims(self) -> int | None: ...
    def to_dict(self) -> dict[str, int]: ...

@final
class DeviceCounters:
    """The balloon device's counters."""

    buffers: int
    bad_buffers: int
    bytes: int
    inflate_buffers: int
    deflate_buffers: int
    pages_inflated: int
    pages_reinflated: int
    pages_deflated: int
    pages_stray_deflated: int
    runs: int
    discard_calls: int
    discard_errors: int
    host_pages_filled: int
    decode_ns: int
    discard_ns: int
    queue_runs: int
    interrupts: int
    stats_buffers: int
    stats_requests: int
    stats_unknown_tags: int
    queue_errors: int
    def to_dict(self) -> dict[str, Any]: ...

@final
class InflateRow:
    """One variant of the inflate benchmark (medians over the rounds)."""

    name: str
    encoding: Encoding | None
    discard: DiscardPolicy
    samples: int
    inflate_secs: float
    min_secs: float
    max_secs: float
    deflate_secs: float
    alloc_secs: float
    encode_send_secs: float
    decode_secs: float
    discard_secs: float
    buffers: int
    kicks: int
    discard_calls: int
    pages: int
    rss_drop_bytes: int
    ratio_to_pfn: float
    ratio_to_floor: float
    def to_dict(self) -> dict[str, Any]: ...

@final
class InflateTable:
    """The inflate benchmark: every variant, and the run-wide figures."""

    guest_bytes: int
    inflate_bytes: int
    rounds: int
    floor_secs: float
    populate_secs: float
    fragmentation: float | None
    rows: list[InflateRow]
    def to_dict(self) -> dict[str, Any]: ...

@final
class HugeRow:
    """One backing and variant of the huge-page benchmark (I4)."""

    backing: Backing
    variant: str
    samples: int
    secs: float
    ballooned_bytes: int
    returned_bytes: int
    gib_per_s: float
    discard_calls: int
    huge_share_before: float
    memfree_gain_bytes: int
    thp_partially_mapped: int
    ratio_to_floor: float
    verified: bool
    note: str
    def to_dict(self) -> dict[str, Any]: ...

@final
class HugeTable:
    """The huge-page benchmark (I4): every backing and variant."""

    guest_bytes: int
    inflate_bytes: int
    rounds: int
    rows: list[HugeRow]
    def to_dict(self) -> dict[str, Any]: ...

@final
class BenchSnapshot:
    """Where a benchmark is."""

    label: str
    steps_done: int
    steps_total: int
    populate_done: int
    populate_total: int
    round: int
    pages_done: int
    pages_total: int
    bytes_sent: int
    def to_dict(self) -> dict[str, Any]: ...

@final
class RoundStats:
    """What one pre-copy round of a migration did."""

    round: int
    stop_and_copy: bool
    pages_in_bitmap: int
    hinted_pages: int
    unpopulated_pages: int
    zero_pages: int
    data_pages: int
    bytes_sent: int
    secs: float
    dirty_after: int
    def to_dict(self) -> dict[str, Any]: ...

@final
class MigrationResult:
    """What a migration did, as the source saw it (and the destination, when it ran here)."""

    hints: HintMode
    skip_unpopulated: bool
    total_secs: float
    downtime_secs: float
    rounds: int
    converged: bool
    bytes_sent: int
    pages_sent: int
    zero_pages: int
    hinted_pages: int
    unpopulated_pages: int
    pages_read: int
    peak_rss_bytes: int
    verified_pages: int | None
    mismatched_pages: int | None
    free_pages_differing: int | None
    workload_pages_dirtied: int
    dirty_backend: str
    per_round: list[RoundStats]
    def to_dict(self) -> dict[str, Any]: ...

@final
class MigrationProgress:
    """Where a migration is: round, pages done of the round, bytes sent."""

    round: int
    pages_done: int
    pages_total: int
    bytes_sent: int
    stop_and_copy: bool
    def to_dict(self) -> dict[str, Any]: ...

@final
class GuestInfo:
    """What a `Guest` was built as."""

    name: str
    guest_bytes: int
    used_bytes: int
    stale_free_bytes: int
    untouched_bytes: int
    free_blocks_by_order: list[int]
    build_secs: float
    def to_dict(self) -> dict[str, Any]: ...

@final
class DestReport:
    """What a migration destination received."""

    guest_bytes: int
    rounds: int
    data_pages: int
    zero_pages: int
    bytes_received: int
    total_secs: float
    verified_pages: int | None
    mismatched_pages: int | None
    def to_dict(self) -> dict[str, Any]: ...

@final
class MigrateRow:
    """One scenario and variant of the migration benchmark."""

    scenario: str
    variant: str
    hints: HintMode
    hint_provider: str | None
    skip_unpopulated: bool
    skipped: str | None
    guest_bytes: int
    used_bytes: int
    stale_free_bytes: int
    untouched_bytes: int
    runs: int
    total_ms: float
    total_ms_range: tuple[float, float]
    downtime_ms: float
    bytes_sent: int
    pages_read: int
    data_pages: int
    hinted_pages: int
    unpopulated_pages: int
    rounds: int
    peak_rss_bytes: int
    floor_ms: float
    ratio_to_floor: float
    ratio_to_link: float
    speedup_vs_no_hints: float | None
    verified: bool | None
    def to_dict(self) -> dict[str, Any]: ...

@final
class VhostStatus:
    """A snapshot of a VhostUserBackend."""

    connected: bool
    frontends_served: int
    negotiated_features: list[str]
    driver_ok: bool
    target_pages: int
    actual_pages: int
    inflated_pages: int
    pages_discarded: int
    discard_calls: int
    pages_reported: int
    pages_hinted: int
    hint_cmd_id: int
    hint_guest_cmd_id: int
    inflate_buffers: int
    deflate_buffers: int
    stats_updates: int
    ram_bytes: int
    ram_backed_bytes: int
    errors: list[str]
    def to_dict(self) -> dict[str, Any]: ...
