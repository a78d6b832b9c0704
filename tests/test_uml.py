"""The UML harness itself: fetched through the project's script, boots, runs commands, keeps its
RAM file where the test says, and leaves no process behind however it ends."""

from __future__ import annotations

import os
import signal

import pytest

from vballoon.uml import UmlUnavailable, cached, fetch
from vballoon.umlguest import UmlGuest, UmlGuestError


@pytest.fixture(scope="module")
def uml():
    try:
        return fetch()
    except UmlUnavailable as e:
        pytest.skip(f"User-Mode Linux cannot be fetched: {e}")


def test_fetch_is_idempotent_and_cached(uml):
    again = fetch()
    assert again == uml
    assert cached() == uml
    assert os.access(uml.kernel, os.X_OK)
    assert uml.balloon_module.is_file()


def test_unreachable_registry_is_reported_as_unavailable(tmp_path):
    # Port 9 (discard) on loopback refuses connections: the registry "cannot be reached".
    with pytest.raises(UmlUnavailable, match="cannot reach"):
        fetch(tmp_path / "uml", mirror="http://127.0.0.1:9/debian", log=lambda _: None)
    assert cached(tmp_path / "uml") is None


def test_boot_run_and_power_off(uml, tmp_path):
    with UmlGuest(uml, mem="128M", workdir=tmp_path) as g:
        assert g.run("uname -r").out.strip() == uml.modules.name
        r = g.run("exit 3", check=False)
        assert r.rc == 3
        with pytest.raises(UmlGuestError, match="failed"):
            g.run("false")
        info = g.meminfo()
        assert 100 << 20 < info["MemTotal"] <= 128 << 20
        # UML's RAM is one file in our TMPDIR, sized as mem=, mostly unpopulated at boot.
        assert str(os.readlink(g.ram_file())).startswith(str(tmp_path / "ram"))
        assert g.ram_size_bytes() == 128 << 20
        before = g.ram_allocated_bytes()
        assert before < 128 << 20
        g.run("dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null")
        assert g.ram_allocated_bytes() >= before + (48 << 20)  # the guest touched its RAM
        pid = g.pid
    assert not g.alive()
    assert g.group_pids() == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_hung_or_killed_guest_leaves_nothing_behind(uml, tmp_path):
    g = UmlGuest(uml, mem="64M", workdir=tmp_path)
    with g:
        g.send("sleep 1000")  # never answers
        with pytest.raises(UmlGuestError, match="no answer"):
            g.result(0, timeout=0.5)
        os.killpg(g.pid, signal.SIGSTOP)  # a stopped guest cannot power itself off
        g.poweroff(timeout=0.5)
    assert g.group_pids() == []
    assert not g.alive()


def test_a_guest_that_dies_is_reported(uml, tmp_path):
    with UmlGuest(uml, mem="64M", workdir=tmp_path) as g:
        n = g.send("echo o > /proc/sysrq-trigger; sleep 100")
        with pytest.raises(UmlGuestError, match="died"):
            g.result(n, timeout=30)
    assert g.group_pids() == []
