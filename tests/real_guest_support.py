"""Shared pieces of the real-guest tests: User-Mode Linux (fetched through the project's own
script, cached) booted against `VhostUserBalloon`, driving Linux's own virtio_balloon driver."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vballoon import _native
from vballoon.balloon import MIB_PAGES, VhostUserBalloon
from vballoon.uml import Uml, UmlUnavailable, fetch
from vballoon.umlguest import UmlGuest

PAGE = 4096
MIB = 1 << 20

_fetched: list[Uml] = []


def uml_or_skip() -> Uml:
    """UML from the cache, fetched once per session; a skip, with the reason, only when
    Debian's package registry cannot be reached."""
    if not hasattr(_native, "VhostUserBackend"):
        pytest.skip("vballoon was built without the vhost-user backend")
    if not _fetched:
        try:
            _fetched.append(fetch())
        except UmlUnavailable as e:
            pytest.skip(f"User-Mode Linux cannot be fetched: {e}")
    return _fetched[0]


def wait_until(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def boot(
    uml: Uml, balloon: VhostUserBalloon, workdir: Path, mem: str = "256M", load: bool = True
) -> UmlGuest:
    """A guest connected to `balloon`, its RAM file in `workdir` (measured by the tests); with
    `load`, virtio_balloon is bound and the driver has negotiated (DRIVER_OK)."""
    guest = UmlGuest(uml, mem=mem, balloon_socket=balloon.socket, workdir=workdir)
    guest.start()
    try:
        if load:
            guest.load_balloon()
            wait_until(lambda: balloon.status().driver_ok, 30, "DRIVER_OK after insmod")
    except BaseException:
        guest.close()
        raise
    return guest


def inflate_to(balloon: VhostUserBalloon, mib: int, timeout: float = 120) -> None:
    balloon.set_amount_mib(mib)
    ok = balloon.backend.wait_for(actual_pages=mib * MIB_PAGES, timeout=timeout)
    s = balloon.status()
    assert ok, f"the guest's actual stayed at {s.actual_pages} pages (target {mib * MIB_PAGES})"


def populate_free_memory(guest: UmlGuest, mib: int) -> None:
    """Touch `mib` MiB of guest memory and free it again (busybox dd's buffer, filled from
    /dev/zero), so the guest's free pages hold blocks in its RAM file on the host."""
    guest.run(f"dd if=/dev/zero of=/dev/null bs={mib}M count=1 2>/dev/null", timeout=120)


def oom_kills_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if "Out of memory" in line or "oom-kill" in line]
