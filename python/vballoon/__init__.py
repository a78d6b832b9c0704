"""vballoon: virtio-balloon fast (de)inflation and free-page-hinted live migration.

A Rust core (guest memory, split virtqueues, page-set encodings, the balloon device and driver,
a pre-copy migration engine) with a Python API for scripting guest/host scenarios:

- `Session`: a guest with a balloon, to inflate and deflate (`run_until_settled`).
- `Guest`: a running guest to live-migrate (`migrate`), in process or to another process
  (`listen_migration`).
- `GuestMemory`, `PageSet`, `virtqueue_pair`, `encode_pages`: the building blocks.
- `VhostUserBalloon` / `VhostUserBackend`: the balloon as a vhost-user device for a real guest.
- `bench_inflate_table`, `bench_huge_table`, `bench_migrate_rows`, `pump_queue`: the benchmarks.

Every result is a typed, read-only object with `to_dict()`; the names enum-like parameters
take are `Literal` aliases in `vballoon.types`; errors derive from `VBalloonError` and from the
matching builtin (`ConfigError` is a `ValueError`, timeouts are `TimeoutError`s).
"""

from vballoon._native import (
    DEFAULT_QUEUE_SIZE,
    BalloonError,
    BalloonTimeout,
    BenchProgress,
    BenchSnapshot,
    Chain,
    Closeable,
    ConfigError,
    DestReport,
    DeviceCounters,
    EncodingError,
    Guest,
    GuestAddressError,
    GuestError,
    GuestInfo,
    GuestMemory,
    GuestMemoryError,
    GuestStats,
    GuestView,
    HugePageStats,
    HugeRow,
    HugeTable,
    HugetlbPool,
    InflateReport,
    InflateRow,
    InflateTable,
    MigrateRow,
    MigrationError,
    MigrationProgress,
    MigrationResult,
    MigrationTimeout,
    PageSet,
    PumpResult,
    QueueLayout,
    RoundStats,
    Session,
    VBalloonError,
    VhostStatus,
    VhostUserBackend,
    VirtqDevice,
    VirtqDriver,
    VirtqueueError,
    __version__,
    bench_huge_table,
    bench_inflate_table,
    bench_migrate_rows,
    decode_pages,
    encode_pages,
    listen_migration,
    parse_size,
    peak_rss_bytes,
    pump_queue,
    rss_bytes,
    virtqueue_pair,
)
from vballoon.balloon import VhostUserBalloon

__all__ = [  # noqa: RUF022  (grouped by topic, for readers of this file)
    # Guest RAM and page sets
    "GuestMemory",
    "GuestView",
    "PageSet",
    "encode_pages",
    "decode_pages",
    "parse_size",
    # Virtqueues
    "virtqueue_pair",
    "VirtqDriver",
    "VirtqDevice",
    "Chain",
    "QueueLayout",
    # The balloon in one process
    "Session",
    "InflateReport",
    "GuestStats",
    "DeviceCounters",
    # Live migration
    "Guest",
    "MigrationResult",
    "RoundStats",
    "MigrationProgress",
    "GuestInfo",
    # Between processes
    "listen_migration",
    "DestReport",
    # A real guest's balloon (vhost-user)
    "VhostUserBalloon",
    "VhostUserBackend",
    "VhostStatus",
    # Benchmarks
    "pump_queue",
    "PumpResult",
    "bench_inflate_table",
    "InflateTable",
    "InflateRow",
    # Benchmarks (huge pages, migration)
    "bench_huge_table",
    "HugeTable",
    "HugeRow",
    "bench_migrate_rows",
    "MigrateRow",
    # Progress and host memory
    "BenchProgress",
    "BenchSnapshot",
    "HugePageStats",
    "HugetlbPool",
    # Process memory, constants, the context-manager base
    "rss_bytes",
    "peak_rss_bytes",
    "DEFAULT_QUEUE_SIZE",
    "Closeable",
    "__version__",
    # Errors: the base, invalid arguments, memory
    "VBalloonError",
    "ConfigError",
    "GuestMemoryError",
    "GuestAddressError",
    "GuestError",
    # Errors: rings, pages, the balloon, migration
    "VirtqueueError",
    "EncodingError",
    "BalloonError",
    "BalloonTimeout",
    "MigrationError",
    "MigrationTimeout",
]
