"""Type stubs for the native extension `vballoon._native` (checked by mypy.stubtest)."""

from typing import final

from typing_extensions import Buffer, Self

# The result classes (attributes only), kept in their own stub file to keep this one short.
from vballoon._native_results import (
    BenchSnapshot as BenchSnapshot,
    DestReport as DestReport,
    DeviceCounters as DeviceCounters,
    GuestInfo as GuestInfo,
    GuestStats as GuestStats,
    HugePageStats as HugePageStats,
    HugeRow as HugeRow,
    HugeTable as HugeTable,
    HugetlbPool as HugetlbPool,
    InflateReport as InflateReport,
    InflateRow as InflateRow,
    InflateTable as InflateTable,
    MigrateRow as MigrateRow,
    MigrationProgress as MigrationProgress,
    MigrationResult as MigrationResult,
    PumpResult as PumpResult,
    QueueLayout as QueueLayout,
    RoundStats as RoundStats,
    VhostStatus as VhostStatus,
)
from vballoon.types import (
    AbiMode,
    Backing,
    DirtyTracking,
    DiscardPolicy,
    Duration,
    Encoding,
    Feature,
    HintMode,
    Link,
    MigrateVariant,
    NotifyMode,
    Rate,
    RunMode,
    Scenario,
    Size,
)

__version__: str
DEFAULT_QUEUE_SIZE: int

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "BalloonError",
    "BalloonTimeout",
    "BenchProgress",
    "BenchSnapshot",
    "Chain",
    "Closeable",
    "ConfigError",
    "DestReport",
    "DeviceCounters",
    "EncodingError",
    "Guest",
    "GuestAddressError",
    "GuestError",
    "GuestInfo",
    "GuestMemory",
    "GuestMemoryError",
    "GuestStats",
    "GuestView",
    "HugePageStats",
    "HugeRow",
    "HugeTable",
    "HugetlbPool",
    "InflateReport",
    "InflateRow",
    "InflateTable",
    "MigrateRow",
    "MigrationError",
    "MigrationProgress",
    "MigrationResult",
    "MigrationTimeout",
    "PageSet",
    "PumpResult",
    "QueueLayout",
    "RoundStats",
    "Session",
    "VBalloonError",
    "VhostStatus",
    "VhostUserBackend",
    "VirtqDevice",
    "VirtqDriver",
    "VirtqueueError",
    "__version__",
    "bench_huge_table",
    "bench_inflate_table",
    "bench_migrate_rows",
    "decode_pages",
    "encode_pages",
    "listen_migration",
    "parse_size",
    "peak_rss_bytes",
    "pump_queue",
    "rss_bytes",
    "virtqueue_pair",
]

class VBalloonError(Exception):
    """Base class of every vballoon error."""

class ConfigError(VBalloonError, ValueError):
    """An argument is invalid (size, count, name, range, timeout), or the object is closed."""

class GuestMemoryError(VBalloonError):
    """A guest-memory access or operation failed."""

class GuestAddressError(GuestMemoryError, ValueError):
    """An address, length or size given for guest RAM is out of range or misaligned."""

    address: int | None
    length: int | None
    size: int | None
    alignment: int | None

class GuestError(VBalloonError):
    """The guest model refused an operation (allocator, workload)."""

class VirtqueueError(VBalloonError):
    """A virtqueue operation failed or the guest broke the ring protocol."""

class EncodingError(VBalloonError):
    """A page-set message is malformed or hostile."""

class MigrationError(VBalloonError):
    """A live migration failed (stream, transport, timeout, destination)."""

    phase: str | None
    round: int | None
    timeout: float | None

class MigrationTimeout(MigrationError, TimeoutError):
    """A migration peer made no progress within the timeout."""

class BalloonError(VBalloonError):
    """The balloon failed: transport negotiation, the device, or the guest driver."""

class BalloonTimeout(BalloonError, TimeoutError):
    """The balloon device or the guest driver did not answer within the timeout."""

    queue: int | None
    timeout: float | None
    target_pages: int | None
    actual_pages: int | None

class Closeable:
    """An object that owns threads or a socket: `with obj:` calls `obj.close()` on exit."""

    def __enter__(self) -> Self: ...
    def __exit__(self, *_exc: object) -> bool: ...

@final
class GuestMemory:
    """The guest's RAM: one mmap'd region, guest-physical address 0 at its start."""

    def __new__(cls, size: Size, backing: Backing = "anonymous") -> GuestMemory: ...
    @staticmethod
    def from_memfd(fd: int, size: Size) -> GuestMemory: ...
    @property
    def size(self) -> int: ...
    @property
    def pages(self) -> int: ...
    @property
    def backing(self) -> Backing: ...
    @property
    def memfd(self) -> int | None: ...
    @property
    def host_page_size(self) -> int: ...
    def huge_page_stats(self) -> HugePageStats: ...
    def read(self, addr: int, length: int) -> bytes: ...
    def write(self, addr: int, data: Buffer) -> None: ...
    def read_u8(self, addr: int) -> int: ...
    def read_u16(self, addr: int) -> int: ...
    def read_u32(self, addr: int) -> int: ...
    def read_u64(self, addr: int) -> int: ...
    def write_u8(self, addr: int, value: int) -> None: ...
    def write_u16(self, addr: int, value: int) -> None: ...
    def write_u32(self, addr: int, value: int) -> None: ...
    def write_u64(self, addr: int, value: int) -> None: ...
    def fill(self, addr: int, length: Size, byte: int = 0) -> None: ...
    def discard(self, addr: int, length: Size) -> None: ...
    def populate(self, addr: int, length: Size) -> None: ...
    def resident_pages(self, addr: int = 0, length: Size | None = None) -> int: ...
    def is_zero(self, addr: int, length: Size) -> bool: ...
    def view(self, addr: int, length: Size) -> GuestView: ...
    def __len__(self) -> int: ...

@final
class GuestView:
    """A writable zero-copy view of a range of guest RAM (buffer protocol)."""

    @property
    def addr(self) -> int: ...
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...

def rss_bytes() -> int: ...
def peak_rss_bytes() -> int: ...
def parse_size(size: Size) -> int: ...

@final
class VirtqDriver:
    """The guest's end of a virtqueue."""

    def add(
        self,
        readable: list[tuple[int, int]] = ...,
        writable: list[tuple[int, int]] = ...,
    ) -> int: ...
    def kick(self) -> bool: ...
    def pop_used(self) -> tuple[int, int] | None: ...
    def enable_interrupts(self) -> bool: ...
    def disable_interrupts(self) -> None: ...
    def wait_interrupt(self, timeout: float | None = None) -> int: ...
    @property
    def num_free(self) -> int: ...
    @property
    def layout(self) -> QueueLayout: ...

@final
class Chain:
    """One validated descriptor chain, as the device popped it."""

    @property
    def head(self) -> int: ...
    @property
    def segments(self) -> list[tuple[int, int, bool]]: ...
    def read(self) -> bytes: ...
    def write(self, data: Buffer) -> int: ...

@final
class VirtqDevice:
    """The VMM's end of a virtqueue: treats everything the guest wrote as hostile."""

    def pop(self) -> Chain | None: ...
    def add_used(self, head: int, length: int = 0) -> None: ...
    def signal_used(self) -> bool: ...
    def needs_interrupt(self) -> bool: ...
    def enable_notifications(self) -> bool: ...
    def disable_notifications(self) -> None: ...
    def wait_kick(self, timeout: float | None = None) -> int: ...
    @property
    def needs_reset(self) -> bool: ...
    def reset(self) -> None: ...
    @property
    def layout(self) -> QueueLayout: ...

def virtqueue_pair(
    memory: GuestMemory,
    base: int = 0,
    size: int = 256,
    *,
    event_idx: bool = False,
    indirect: bool = False,
    notify: NotifyMode = "polling",
) -> tuple[VirtqDriver, VirtqDevice]: ...
def pump_queue(
    memory: GuestMemory,
    buffers: int = 1_000_000,
    *,
    segments: int = 1,
    queue_size: int = 256,
    threaded: bool = False,
    event_idx: bool = True,
    indirect: bool = False,
) -> PumpResult: ...

@final
class PageSet:
    """A set of guest pages as a dense bitmap of u64 words (buffer protocol: numpy uint64)."""

    def __new__(cls, npages: int, runs: list[tuple[int, int]] = ...) -> PageSet: ...
    @property
    def npages(self) -> int: ...
    def add(self, start: int, length: int = 1) -> None: ...
    def discard(self, start: int, length: int = 1) -> None: ...
    def count(self) -> int: ...
    def runs(self) -> list[tuple[int, int]]: ...
    def __contains__(self, key: int, /) -> bool: ...
    def __len__(self) -> int: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...

def encode_pages(encoding_name: Encoding, pages: PageSet) -> list[list[bytes]]: ...
def decode_pages(encoding_name: Encoding, segments: list[bytes], npages: int) -> PageSet: ...

@final
class Session(Closeable):
    """A guest with a balloon: RAM, allocator, driver, device and the queues between them."""

    def __new__(
        cls,
        guest_size: Size | None = None,
        *,
        encoding: Encoding = "bitmap",
        backing: Backing = "anonymous",
        mode: RunMode = "sync",
        abi: AbiMode = "vballoon",
        discard: DiscardPolicy = "coalesced",
        queue_size: int = 128,
        must_tell_host: bool = True,
        deflate_on_oom: bool = False,
        stats: bool = True,
        alloc_order: int = 0,
        seed: int = 1,
    ) -> Session: ...
    @property
    def memory(self) -> GuestMemory: ...
    def set_target(self, size: Size) -> None: ...
    def set_target_pages(self, pages: int) -> None: ...
    def run_until_settled(self, timeout: float = 60.0) -> InflateReport: ...
    @property
    def target_pages(self) -> int: ...
    @property
    def actual_pages(self) -> int: ...
    def balloon_pages(self) -> PageSet: ...
    def resident_bytes(self) -> int: ...
    def stats(self, timeout: float = 5.0) -> GuestStats | None: ...
    def guest_fill(self, size: Size, order: int = 0) -> int: ...
    def guest_free(self, share: float) -> int: ...
    def guest_alloc(self, order: int = 0, timeout: float = 10.0) -> int: ...
    def guest_checksums(self) -> dict[int, int]: ...
    @property
    def guest_free_bytes(self) -> int: ...
    def device_counters(self) -> DeviceCounters: ...
    def device_errors(self) -> list[str]: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...

def bench_inflate_table(
    guest: Size | None = None,
    inflate: Size | None = None,
    *,
    rounds: int = 3,
    fragmentation: float | None = None,
    mode: RunMode = "sync",
    backing: Backing = "anonymous",
    progress: BenchProgress | None = None,
) -> InflateTable: ...
def bench_huge_table(
    guest: Size | None = None,
    inflate: Size | None = None,
    *,
    rounds: int = 3,
    backings: list[Backing] | None = None,
    fragmented: bool = True,
    reserve: bool = True,
) -> HugeTable: ...

@final
class BenchProgress:
    """Counters a benchmark updates while it runs; poll `snapshot()` from another thread."""

    def __new__(cls) -> BenchProgress: ...
    def snapshot(self) -> BenchSnapshot: ...

@final
class Guest(Closeable):
    """A running guest to migrate: RAM, page allocator and a workload that can keep writing."""

    def __new__(
        cls,
        size: Size | None = None,
        *,
        scenario: Scenario | None = None,
        used: Size | None = None,
        free_share: float = 0.0,
        order: int = 0,
        backing: Backing = "anonymous",
        seed: int = 1,
    ) -> Guest: ...
    @property
    def memory(self) -> GuestMemory: ...
    def info(self) -> GuestInfo: ...
    def free_pages(self) -> PageSet: ...
    def used_pages(self) -> PageSet: ...
    def dirty_pages(self) -> PageSet: ...
    def write(self, addr: int, data: Buffer) -> None: ...
    def mark_dirty(self, pfn: int, count: int = 1) -> None: ...
    def progress(self) -> MigrationProgress: ...
    def resume(self) -> None: ...
    @property
    def paused(self) -> bool: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    def migrate(
        self,
        *,
        to: str | None = None,
        hints: HintMode = "off",
        bandwidth: Rate | None = None,
        downtime: Duration | None = None,
        dirty_rate: Rate | None = None,
        skip_unpopulated: bool = False,
        dirty_tracking: DirtyTracking = "explicit",
        link: Link = "socketpair",
        verify: bool = True,
        max_rounds: int = 30,
        dest_backing: Backing = "anonymous",
        timeout: float = 30.0,
        key: bytes | None = None,
        resume: bool = True,
    ) -> MigrationResult: ...

def listen_migration(
    address: str,
    size: Size,
    *,
    backing: Backing = "memfd",
    timeout: float = 60.0,
    key: bytes | None = None,
    insecure: bool = False,
    deadline: float = 3600.0,
) -> DestReport: ...
def bench_migrate_rows(
    scenarios: list[Scenario] | None = None,
    variants: list[MigrateVariant] | None = None,
    *,
    guest: Size | None = None,
    repetitions: int = 3,
    bandwidth: Rate | None = None,
    dirty_rate: Rate | None = None,
    progress: BenchProgress | None = None,
) -> list[MigrateRow]: ...

@final
class VhostUserBackend(Closeable):
    """A vhost-user balloon backend (virtio device 5) serving frontends on a Unix socket."""

    def __new__(
        cls, socket: str, *, features: list[Feature] | None = None, queue_size: int = 256
    ) -> VhostUserBackend: ...
    def set_features(self, features: list[Feature]) -> None: ...
    def set_target(self, pages: int) -> None: ...
    def request_stats(self) -> bool: ...
    def stats(self) -> GuestStats: ...
    def start_hinting(self) -> int: ...
    def stop_hinting(self) -> None: ...
    def status(self) -> VhostStatus: ...
    def wait_for(
        self, *, actual_pages: int | None = None, connected: bool | None = None, timeout: float
    ) -> bool: ...
    def close(self) -> None: ...
