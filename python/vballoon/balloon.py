"""`VhostUserBalloon`: the vhost-user balloon backend with Firecracker's balloon semantics.

It owns a `_native.VhostUserBackend` (the Rust device, serving one frontend at a time on its
own threads), a thread that polls statistics and acknowledges free page hinting runs, and,
given `api_socket`, the HTTP control API (`vballoon.api`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from vballoon import _native
from vballoon.types import Feature

MIB_PAGES = 256  # 4 KiB pages per MiB: virtio-balloon counts 4 KiB pages (virtio 1.2, 5.5.6)
MAX_AMOUNT_MIB = 0xFFFF_FFFF // MIB_PAGES  # num_pages is a le32 in config space
MAX_STATS_INTERVAL_S = 0xFFFF  # Firecracker's field is a u16
# Offered whatever the configuration: the guest must tell before reusing deflated pages, and
# page poisoning lets the device know freed pages are not all zero.
ALWAYS_OFFERED: tuple[Feature, ...] = ("must_tell_host", "page_poison")
# Tag names (Linux's, or QEMU's hyphenated ones) that Firecracker's API spells differently.
FIRECRACKER_STAT_NAMES = {
    "htlb_pgalloc": "hugetlb_allocations",
    "htlb_pgfail": "hugetlb_failures",
    "oom_kills": "oom_kill",
    "alloc_stalls": "alloc_stall",
    "async_scans": "async_scan",
    "direct_scans": "direct_scan",
    "async_reclaims": "async_reclaim",
    "direct_reclaims": "direct_reclaim",
}
VIRTIO_BALLOON_CMD_ID_STOP = 0
VIRTIO_BALLOON_CMD_ID_DONE = 1


class _AsDict:
    """`to_dict()` of the dataclasses below: the JSON body Firecracker's API answers with."""

    def to_dict(self) -> dict[str, Any]:
        """Every field, keyed by its name (Firecracker's)."""
        assert dataclasses.is_dataclass(self)
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BalloonConfig(_AsDict):
    """The balloon's configuration (GET /balloon)."""

    amount_mib: int
    deflate_on_oom: bool
    stats_polling_interval_s: int
    free_page_hinting: bool
    free_page_reporting: bool


@dataclass(frozen=True)
class HintingStatus(_AsDict):
    """Free page hinting (GET /balloon/hinting/status): the host's and the guest's last
    command ids, and the pages hinted so far."""

    host_cmd: int
    guest_cmd: int
    pages_hinted: int


@dataclass(frozen=True)
class BalloonStatistics:
    """GET /balloon/statistics: the backend's status (the balloon's size, the host's counters)
    and the guest's last statistics sample."""

    status: _native.VhostStatus
    guest: _native.GuestStats

    # The host's counters the answer carries after Firecracker's fields.
    OURS: ClassVar[tuple[str, ...]] = (
        "stats_updates", "ram_bytes", "ram_backed_bytes", "pages_discarded", "discard_calls",
        "pages_reported", "pages_hinted",
    )  # fmt: skip

    @property
    def target_mib(self) -> int:
        """The target in MiB."""
        return self.status.target_pages // MIB_PAGES

    @property
    def actual_mib(self) -> int:
        """The balloon's size in MiB."""
        return self.status.actual_pages // MIB_PAGES

    def to_dict(self) -> dict[str, Any]:
        """Firecracker's fields (the guest's tags it names differently renamed), then ours."""
        out: dict[str, Any] = {
            "target_pages": self.status.target_pages,
            "actual_pages": self.status.actual_pages,
            "target_mib": self.target_mib,
            "actual_mib": self.actual_mib,
        }
        for name, value in self.guest.to_dict().items():
            out[FIRECRACKER_STAT_NAMES.get(name, name)] = value
        return {**out, **{name: getattr(self.status, name) for name in self.OURS}}


class BalloonApiError(ValueError):
    """A request the balloon refuses; `status` is the HTTP code the API answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _check_amount(amount_mib: int, ram_bytes: int) -> None:
    if isinstance(amount_mib, bool) or not isinstance(amount_mib, int):
        raise BalloonApiError(f"amount_mib must be an integer, not {amount_mib!r}")
    if amount_mib < 0 or amount_mib > MAX_AMOUNT_MIB:
        raise BalloonApiError(f"amount_mib {amount_mib} is outside 0..={MAX_AMOUNT_MIB}")
    if ram_bytes and amount_mib > ram_bytes >> 20:
        raise BalloonApiError(
            f"amount_mib {amount_mib} is larger than the guest's memory ({ram_bytes >> 20} MiB)"
        )


def _check_interval(seconds: int) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise BalloonApiError(f"stats_polling_interval_s must be an integer, not {seconds!r}")
    if seconds < 0 or seconds > MAX_STATS_INTERVAL_S:
        raise BalloonApiError(
            f"stats_polling_interval_s {seconds} is outside 0..={MAX_STATS_INTERVAL_S}"
        )


SUN_PATH_MAX = 107  # bytes of sockaddr_un.sun_path a path may use (108 with its NUL, unix(7))


def _check_socket_path(path: str | os.PathLike[str], what: str) -> str:
    """A path a Unix socket can be bound at, or BalloonApiError naming it (not an OSError: an
    empty, NUL-carrying or over-long path is the caller's mistake, not the host's)."""
    p: object = os.fspath(path)  # TypeError for what is not a path
    if not isinstance(p, str):
        raise BalloonApiError(f"{what} must be a str path, not {p!r}")
    raw = os.fsencode(p)
    if not raw or b"\0" in raw or len(raw) > SUN_PATH_MAX:
        raise BalloonApiError(f"{what} {p!r} must be 1..={SUN_PATH_MAX} bytes without NUL")
    return p


class VhostUserBalloon:
    """A vhost-user balloon (virtio device 5) on `socket`, controlled from Python or, with
    `api_socket`, over Firecracker's balloon API. A context manager; `close()` is idempotent.

    `deflate_on_oom`, statistics (`stats_polling_interval_s` > 0), `free_page_hinting` and
    `free_page_reporting` are feature offers: like Firecracker, they can change only while no
    guest has negotiated. `amount_mib` can change at any time.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str],
        api_socket: str | os.PathLike[str] | None = None,
        *,
        amount_mib: int = 0,
        deflate_on_oom: bool = False,
        stats_polling_interval_s: int = 0,
        free_page_hinting: bool = True,
        free_page_reporting: bool = True,
        queue_size: int = 256,
    ) -> None:
        _check_amount(amount_mib, 0)
        _check_interval(stats_polling_interval_s)
        self.socket = _check_socket_path(socket, "socket")
        if api_socket is not None:
            api_socket = _check_socket_path(api_socket, "api_socket")
        self._lock = threading.RLock()
        self._amount_mib = amount_mib
        self._deflate_on_oom = bool(deflate_on_oom)
        self._stats_interval = stats_polling_interval_s
        self._hinting = bool(free_page_hinting)
        self._reporting = bool(free_page_reporting)
        self._ack_on_stop = False
        self._hint_pending: int | None = None  # cmd id awaiting the guest's STOP
        self._hint_seen_guest = False
        self._hint_pages_at_start = 0
        self._closed = False
        self._wake = threading.Event()
        self.backend = _native.VhostUserBackend(
            self.socket, features=self.features(), queue_size=queue_size
        )
        try:
            if amount_mib:
                self.backend.set_target(amount_mib * MIB_PAGES)
            self._watcher = threading.Thread(
                target=self._watch, name="vballoon-balloon-watch", daemon=True
            )
            self._watcher.start()
            self.api = None
            if api_socket is not None:
                from vballoon.api import ApiServer

                self.api = ApiServer(api_socket, self)
                self.api.start()
        except BaseException:
            self.close()
            raise

    # -- life cycle -------------------------------------------------------------------------
    def __enter__(self) -> VhostUserBalloon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops the API, the watcher thread and the backend; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        api = getattr(self, "api", None)
        if api is not None:
            api.close()
        watcher = getattr(self, "_watcher", None)
        if watcher is not None:
            watcher.join(5)
        self.backend.close()

    # -- state ------------------------------------------------------------------------------
    def features(self) -> list[Feature]:
        """The feature names offered to the next guest that negotiates."""
        names: list[Feature] = list(ALWAYS_OFFERED)
        if self._stats_interval:
            names.append("stats_vq")
        if self._deflate_on_oom:
            names.append("deflate_on_oom")
        if self._hinting:
            names.append("free_page_hint")
        if self._reporting:
            names.append("reporting")
        return names

    def status(self) -> _native.VhostStatus:
        """A snapshot of the backend."""
        return self.backend.status()

    def negotiated(self) -> bool:
        """True while a connected guest has negotiated features (offers are then fixed)."""
        s = self.backend.status()
        return bool(s.connected and s.negotiated_features)

    def _require_not_negotiated(self, what: str) -> None:
        if self.negotiated():
            raise BalloonApiError(
                f"{what} changes the features offered, and the connected guest has already "
                "negotiated them (PATCH /balloon changes amount_mib at any time)"
            )

    def _ram_bytes(self) -> int:
        s = self.backend.status()
        return s.ram_bytes if s.connected else 0

    # -- Firecracker's operations -----------------------------------------------------------
    def configure(
        self,
        amount_mib: int,
        deflate_on_oom: bool,
        stats_polling_interval_s: int = 0,
        free_page_hinting: bool | None = None,
        free_page_reporting: bool | None = None,
    ) -> None:
        """PUT /balloon: the whole configuration (only before a guest negotiates)."""
        _check_amount(amount_mib, self._ram_bytes())
        _check_interval(stats_polling_interval_s)
        with self._lock:
            self._require_not_negotiated("PUT /balloon")
            old = (self._deflate_on_oom, self._stats_interval, self._hinting, self._reporting)
            self._deflate_on_oom = bool(deflate_on_oom)
            self._stats_interval = stats_polling_interval_s
            if free_page_hinting is not None:
                self._hinting = bool(free_page_hinting)
            if free_page_reporting is not None:
                self._reporting = bool(free_page_reporting)
            try:
                self.backend.set_features(self.features())
            except _native.ConfigError as e:
                # A guest negotiated between the check and the call: keep the old offer.
                self._deflate_on_oom, self._stats_interval, self._hinting, self._reporting = old
                raise BalloonApiError(f"PUT /balloon: {e}") from e
            self._amount_mib = amount_mib
            self.backend.set_target(amount_mib * MIB_PAGES)
        self._wake.set()

    def set_amount_mib(self, amount_mib: int) -> None:
        """PATCH /balloon: a new target, sent to the guest as a config change."""
        _check_amount(amount_mib, self._ram_bytes())
        with self._lock:
            self._amount_mib = amount_mib
            self.backend.set_target(amount_mib * MIB_PAGES)

    def config(self) -> BalloonConfig:
        """GET /balloon."""
        with self._lock:
            return BalloonConfig(
                amount_mib=self._amount_mib,
                deflate_on_oom=self._deflate_on_oom,
                stats_polling_interval_s=self._stats_interval,
                free_page_hinting=self._hinting,
                free_page_reporting=self._reporting,
            )

    def set_stats_interval(self, seconds: int) -> None:
        """PATCH /balloon/statistics: 0 disables; on/off only before a guest negotiates."""
        _check_interval(seconds)
        with self._lock:
            if (seconds == 0) != (self._stats_interval == 0):
                self._require_not_negotiated("turning statistics on or off")
                old = self._stats_interval
                self._stats_interval = seconds
                try:
                    self.backend.set_features(self.features())
                except _native.ConfigError as e:
                    self._stats_interval = old
                    raise BalloonApiError(f"PATCH /balloon/statistics: {e}") from e
            self._stats_interval = seconds
        # Like Firecracker, the first poll after a change happens at once.
        self.backend.request_stats()
        self._wake.set()

    def statistics(self) -> BalloonStatistics:
        """GET /balloon/statistics: the balloon's size, the guest's last sample, our counters."""
        if not self._stats_interval:
            raise BalloonApiError("statistics are not enabled (stats_polling_interval_s is 0)")
        return BalloonStatistics(self.backend.status(), self.backend.stats())

    def start_hinting(self, acknowledge_on_stop: bool = True) -> int:
        """PATCH /balloon/hinting/start: a new command id for the guest; returns it."""
        s = self.backend.status()
        if not (s.connected and "free_page_hint" in s.negotiated_features):
            raise BalloonApiError("free page hinting is not negotiated by a connected guest")
        with self._lock:
            self._hint_pages_at_start = s.pages_hinted
            self._hint_seen_guest = False
            cmd = self.backend.start_hinting()
            self._ack_on_stop = bool(acknowledge_on_stop)
            self._hint_pending = cmd
        self._wake.set()
        return cmd

    def hinting_status(self) -> HintingStatus:
        """GET /balloon/hinting/status: the host's and the guest's last command ids."""
        s = self.backend.status()
        if not (s.connected and "free_page_hint" in s.negotiated_features):
            raise BalloonApiError("free page hinting is not negotiated by a connected guest")
        return HintingStatus(
            host_cmd=s.hint_cmd_id, guest_cmd=s.hint_guest_cmd_id, pages_hinted=s.pages_hinted
        )

    def stop_hinting(self) -> None:
        """PATCH /balloon/hinting/stop: DONE (cmd id 1): the guest frees the hinted pages."""
        s = self.backend.status()
        if not (s.connected and "free_page_hint" in s.negotiated_features):
            raise BalloonApiError("free page hinting is not negotiated by a connected guest")
        with self._lock:
            self._hint_pending = None
            self.backend.stop_hinting()

    # -- the watcher: statistics polls, acknowledging STOP ----------------------------------
    def _hint_stopped(self, cmd: int) -> bool:
        """Whether the guest has sent STOP for `cmd`: it sends `cmd`, hints, then STOP on one
        queue, handled in order, so guest id 0 after seeing `cmd` (or after new hints) is STOP."""
        s = self.backend.status()
        if s.hint_cmd_id != cmd:
            return True  # superseded (a new run, or DONE already sent)
        if s.hint_guest_cmd_id == cmd:
            self._hint_seen_guest = True
            return False
        return s.hint_guest_cmd_id == VIRTIO_BALLOON_CMD_ID_STOP and (
            self._hint_seen_guest or s.pages_hinted > self._hint_pages_at_start
        )

    def _watch(self) -> None:
        next_poll = time.monotonic()
        while not self._closed:
            with self._lock:
                interval = self._stats_interval
                pending = self._hint_pending if self._ack_on_stop else None
            now = time.monotonic()
            try:
                # No buffer held (no guest yet, or its answer still on the way): retry soon.
                if interval and now >= next_poll and self.backend.request_stats():
                    next_poll = now + interval
                if pending is not None and self._hint_stopped(pending):
                    with self._lock:
                        if self._hint_pending == pending:
                            self._hint_pending = None
                            if self.backend.status().hint_cmd_id == pending:
                                self.backend.stop_hinting()
            except _native.VBalloonError:
                pass  # the backend reports device errors in status().errors
            wait = 0.01 if pending is not None else 0.25
            if interval and next_poll > time.monotonic():
                wait = min(wait, next_poll - time.monotonic())
            self._wake.wait(wait)
            self._wake.clear()
