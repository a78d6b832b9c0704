"""Objects that own threads stop them on `with` exit (also when the block raises); a guest
runs again after a migration unless asked not to; errors carry what went wrong as attributes."""

from __future__ import annotations

import os
import time

import pytest
from migrate_support import free_port

import vballoon


def threads_named(name: str) -> int:
    """Threads of this process whose name (comm) is `name`."""
    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                n += f.read().strip() == name
        except FileNotFoundError:
            pass  # the thread ended while we looked
    return n


def wait_threads(name: str, n: int) -> int:
    """Threads named `name`, once there are `n` (a new thread names itself after it starts)."""
    deadline = time.monotonic() + 10
    while threads_named(name) != n and time.monotonic() < deadline:
        time.sleep(0.005)
    return threads_named(name)


def test_a_guest_stops_its_workload_thread_on_exit_also_after_an_exception():
    before = threads_named("vballoon-guest")
    with vballoon.Guest("8MiB", used="1MiB") as g:
        assert wait_threads("vballoon-guest", before + 1) == before + 1
        assert not g.closed
    assert g.closed and threads_named("vballoon-guest") == before
    with pytest.raises(RuntimeError, match="inside"):
        with vballoon.Guest("8MiB", used="1MiB") as g:
            raise RuntimeError("inside the block")
    assert g.closed and threads_named("vballoon-guest") == before
    with pytest.raises(vballoon.ConfigError, match="closed"):
        g.migrate()
    assert g.memory.read(0, 4) is not None  # its memory stays readable
    g.close()  # idempotent


def test_a_threaded_session_stops_its_device_thread_on_exit():
    before = threads_named("vballoon-device")
    with pytest.raises(KeyError):
        with vballoon.Session("16MiB", mode="threaded") as s:
            s.set_target("1MiB")
            s.run_until_settled()  # the device thread starts with the first move
            assert wait_threads("vballoon-device", before + 1) == before + 1
            raise KeyError("inside")
    assert s.closed and threads_named("vballoon-device") == before
    with pytest.raises(vballoon.ConfigError, match="closed"):
        s.set_target(0)


def test_a_guest_runs_again_after_a_migration_unless_asked_not_to():
    with vballoon.Guest("16MiB", used="2MiB") as g:
        r = g.migrate()
        assert r.mismatched_pages == 0 and not g.paused
        g.write(0, b"after")  # the guest is running: it writes, the dirty log sees it
        assert 0 in g.dirty_pages()
        g.migrate(resume=False)
        assert g.paused
        g.resume()
        assert not g.paused


def test_errors_carry_what_went_wrong():
    mem = vballoon.GuestMemory("1MiB")
    with pytest.raises(vballoon.GuestAddressError) as e:
        mem.read(0xFFFF0, 0x20)
    assert (e.value.address, e.value.length, e.value.size) == (0xFFFF0, 0x20, 1 << 20)
    assert isinstance(e.value, ValueError)
    with pytest.raises(vballoon.GuestAddressError) as e:
        mem.discard(4097, 4096)  # not whole pages
    assert (e.value.address, e.value.length, e.value.size) == (4097, 4096, None)

    with pytest.raises(vballoon.MigrationTimeout) as t:
        vballoon.listen_migration(f"127.0.0.1:{free_port()}", "1MiB", timeout=0.05)
    assert isinstance(t.value, TimeoutError) and isinstance(t.value, vballoon.MigrationError)
    assert (t.value.phase, t.value.timeout) == ("accept", 0.05)

    with vballoon.Guest("8MiB", used="1MiB") as g:
        with pytest.raises(vballoon.MigrationError) as m:
            g.migrate(to=f"127.0.0.1:{free_port()}", timeout=2)
        assert m.value.round == 0  # refused before the first round
        assert not g.paused  # a failed migration leaves the guest running


def test_a_balloon_timeout_says_how_far_the_balloon_got():
    with vballoon.Session("64MiB", mode="threaded") as s:
        s.memory.populate(0, s.memory.size)
        s.set_target("48MiB")
        with pytest.raises(vballoon.BalloonTimeout) as e:
            s.run_until_settled(timeout=0.0)
        err = e.value
    assert isinstance(err, TimeoutError) and isinstance(err, vballoon.BalloonError)
    assert err.target_pages == 48 * 256
    assert err.actual_pages is not None and err.actual_pages < err.target_pages
    assert err.timeout == 0.0


def test_exception_attributes_exist_on_every_instance():
    # Raised from Python (no native values): the attributes are there, None.
    e = vballoon.MigrationError("by hand")
    assert (e.phase, e.round, e.timeout) == (None, None, None)
    assert vballoon.GuestAddressError("x").address is None
    assert vballoon.BalloonTimeout("x").target_pages is None
