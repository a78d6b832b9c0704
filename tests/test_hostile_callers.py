"""A careless or hostile Python caller gets typed exceptions, never a crash or a panic."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import vballoon
from vballoon import (
    ConfigError,
    GuestMemory,
    GuestMemoryError,
    MigrationError,
    PageSet,
    Session,
    VBalloonError,
    decode_pages,
    listen_migration,
    virtqueue_pair,
)

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import hostile_driver  # noqa: E402


def test_every_public_callable_is_driven():
    assert hostile_driver.uncovered() == []
    names = hostile_driver.public_callables()
    # The enumeration is live: it sees constructors, methods and properties.
    for expected in ("PageSet.__new__", "GuestMemory.read", "Session.stats", "decode_pages"):
        assert expected in names
    # The Python balloon's API is driven; its private helpers and slots are not API.
    assert "VhostUserBalloon.configure" in names and "VhostUserBackend.wait_for" in names
    assert not [n for n in names if n.endswith(("._watch", ".__weakref__", ".__init__"))]
    assert len(names) > 100


def test_hostile_arguments_never_kill_or_panic(tmp_path):
    log = tmp_path / "calls.log"
    proc = subprocess.run(
        [sys.executable, str(HERE / "hostile_driver.py"), str(log)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "RUST_BACKTRACE": "0"},
    )
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    last = lines[-1] if lines else "(before the first call)"
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        pytest.fail(f"the interpreter died of {sig} during {last}\n{proc.stderr[-2000:]}")
    assert proc.returncode == 0, f"untyped exception:\n{proc.stderr[-4000:]}"
    assert len(lines) > 1000, f"only {len(lines)} calls made"


@pytest.mark.parametrize("npages", [2**62, 2**33, 2**64 - 1])
def test_huge_page_sets_are_refused_with_a_value_error(npages):
    with pytest.raises(ValueError, match="too large"):
        PageSet(npages)
    with pytest.raises(ConfigError, match="too large"):
        decode_pages("pfn", [], npages)


def test_bad_runs_are_value_errors():
    with pytest.raises(ConfigError, match=r"runs: .*outside"):
        PageSet(10, [(5, 100)])
    with pytest.raises(OverflowError):
        PageSet(10, [(-1, 1)])


@pytest.mark.parametrize("timeout", [-1.0, math.nan, math.inf, -math.inf, 1e300, 604801.0])
def test_bad_timeouts_are_value_errors(timeout):
    mem = GuestMemory("1MiB")
    drv, dev = virtqueue_pair(mem, 0, 16)
    with pytest.raises(ValueError, match="not a timeout"):
        drv.wait_interrupt(timeout)
    with pytest.raises(ConfigError, match="not a timeout"):
        dev.wait_kick(timeout)
    with Session("8MiB") as s:
        for call in (s.run_until_settled, s.stats, lambda t: s.guest_alloc(0, t)):
            with pytest.raises(ConfigError, match="timeout"):
                call(timeout)
    with pytest.raises(ConfigError, match="timeout"):
        listen_migration("127.0.0.1:0", "1MiB", timeout=timeout)


def test_timeouts_are_timeout_errors():
    with pytest.raises(TimeoutError) as e:
        listen_migration("127.0.0.1:0", "1MiB", timeout=0.05)
    assert isinstance(e.value, MigrationError)
    assert type(e.value).__name__ == "MigrationTimeout"
    assert issubclass(vballoon.BalloonTimeout, vballoon.BalloonError)
    assert issubclass(vballoon.BalloonTimeout, TimeoutError)


def test_error_classes_keep_their_families():
    assert issubclass(ConfigError, VBalloonError) and issubclass(ConfigError, ValueError)
    assert issubclass(vballoon.GuestAddressError, GuestMemoryError)
    assert issubclass(vballoon.GuestAddressError, ValueError)
    assert issubclass(vballoon.MigrationTimeout, MigrationError)
    with pytest.raises(ValueError, match="outside guest RAM"):
        GuestMemory("1MiB").read(2**40, 8)


def test_reads_past_the_copy_limit_point_to_view():
    mem = GuestMemory("2GiB")
    with pytest.raises(ConfigError, match="view"):
        mem.read(0, (1 << 30) + 1)
    assert len(mem.view(0, "2GiB")) == 2 << 30


def test_bad_guest_model_parameters_are_value_errors():
    with Session("8MiB") as s:
        for share in (math.nan, -0.5, 2.0):
            with pytest.raises(ValueError, match="share"):
                s.guest_free(share)
        with pytest.raises(ConfigError, match="order"):
            s.guest_alloc(200)


def test_closed_session_raises_value_errors():
    s = Session("8MiB")
    s.close()
    with pytest.raises(ValueError, match="closed"):
        s.set_target("1MiB")
    with pytest.raises(ConfigError, match="closed"):
        _ = s.actual_pages


def test_memfd_cannot_be_truncated_under_the_guest():
    mem = GuestMemory("2MiB", backing="memfd")
    mem.fill(0, "2MiB", 0x5A)
    with pytest.raises(PermissionError):
        os.ftruncate(mem.memfd, 0)
    with pytest.raises(PermissionError):
        os.ftruncate(mem.memfd, 4096)
    assert os.fstat(mem.memfd).st_size == 2 << 20
    # Guest access still works, all the way to the last byte.
    assert mem.read_u8((2 << 20) - 1) == 0x5A
    assert mem.read(0, 16) == b"\x5a" * 16


def test_from_memfd_refuses_an_unsealable_memfd():
    fd = os.memfd_create("plain")  # no MFD_ALLOW_SEALING: anyone could truncate it
    try:
        os.ftruncate(fd, 1 << 20)
        with pytest.raises(ConfigError, match="MFD_ALLOW_SEALING"):
            GuestMemory.from_memfd(fd, "1MiB")
    finally:
        os.close(fd)
    fd = os.memfd_create("sealable", os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 1 << 20)
        mem = GuestMemory.from_memfd(fd, "1MiB")
        mem.write_u8(5, 9)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    assert mem.read_u8(5) == 9


@pytest.mark.parametrize("path", ["", "a\x00b", "a" * 108])
def test_malformed_socket_paths_are_value_errors(tmp_path, path):
    from vballoon import VhostUserBackend, VhostUserBalloon

    with pytest.raises(ConfigError, match="without NUL"):
        VhostUserBackend(path)
    with pytest.raises(ValueError, match="without NUL"):
        VhostUserBalloon(path)
    with pytest.raises(ValueError, match="api_socket"):
        VhostUserBalloon(tmp_path / "vu.sock", path or "a\x00")
    assert list(tmp_path.iterdir()) == []  # both paths are checked before anything binds


@pytest.mark.parametrize("timeout", [1e300, 604801.0, math.inf, -1.0])
def test_vhost_waits_are_bounded(tmp_path, timeout):
    with vballoon.VhostUserBackend(str(tmp_path / "vu.sock")) as b:
        with pytest.raises(ConfigError, match="not a timeout"):
            b.wait_for(connected=True, timeout=timeout)
        assert b.wait_for(connected=False, timeout=0.0)
