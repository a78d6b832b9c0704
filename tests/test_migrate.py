"""Live migration from Python: in one process, over TCP, and between two processes."""

import numpy as np
import pytest
from migrate_support import free_port, migrate_to_cli

from vballoon import ConfigError, Guest, MigrationError, listen_migration

MiB = 1 << 20


@pytest.mark.parametrize("link", ["socketpair", "tcp"])
def test_migrate_with_running_workload_verifies_every_used_page(link):
    g = Guest("128MiB", used="16MiB")
    r = g.migrate(dirty_rate="64MiB", link=link, downtime="5ms", bandwidth="2Gbit")
    assert r.mismatched_pages == 0
    assert r.verified_pages >= 16 * MiB // 4096
    assert r.rounds >= 2  # the workload kept writing through round 1


def test_skip_unpopulated_never_reads_untouched_pages():
    g = Guest("256MiB", used="8MiB")
    resident_before = g.memory.resident_pages()
    r = g.migrate(skip_unpopulated=True)
    assert r.unpopulated_pages >= (256 - 8 - 1) * MiB // 4096
    assert r.pages_read <= resident_before + 64
    assert g.memory.resident_pages() == resident_before
    assert r.mismatched_pages == 0


def test_scenario_m2_scaled_down_has_stale_free_pages():
    g = Guest("64MiB", scenario="m2")
    info = g.info()
    assert info.stale_free_bytes > info.used_bytes > 0
    free = g.free_pages()
    words = np.frombuffer(free, dtype=np.uint64)
    assert int(np.unpackbits(words.view(np.uint8)).sum()) == free.count()
    r = g.migrate()
    assert r.bytes_sent > info.stale_free_bytes  # without hints stale pages cross the link


def test_writes_through_the_guest_are_logged():
    g = Guest("16MiB", used="1MiB")
    g.write(5 * 4096 + 10, b"dirty")
    assert 5 in g.dirty_pages()
    with pytest.raises(ConfigError):
        g.mark_dirty(g.memory.pages, 1)


def test_two_processes_over_tcp_with_the_cli():
    g = Guest("256MiB", used="32MiB", backing="memfd")
    r, dest = migrate_to_cli(g, "256MiB", dirty_rate="16MiB")
    assert dest["mismatched_pages"] == 0 == r.mismatched_pages
    assert dest["verified_pages"] == r.verified_pages >= 32 * MiB // 4096
    assert dest["bytes_received"] == r.bytes_sent


def test_nobody_listening_is_a_typed_error():
    g = Guest("16MiB", used="1MiB")
    with pytest.raises(MigrationError):
        g.migrate(to=f"127.0.0.1:{free_port()}", timeout=2)


def test_listen_times_out_cleanly():
    with pytest.raises(MigrationError, match=r"(?i)time"):
        listen_migration(f"127.0.0.1:{free_port()}", "16MiB", timeout=0.5)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="scenario"):
        Guest(scenario="m9")
    with pytest.raises(ConfigError):
        Guest()
    g = Guest("16MiB", used="1MiB")
    with pytest.raises(ConfigError, match="hints"):
        g.migrate(hints="telepathy")
    with pytest.raises(ConfigError, match="bandwidth"):
        g.migrate(bandwidth="fast")


@pytest.mark.parametrize("hints", ["bitmap", "upstream", "reporting"])
def test_hint_modes_skip_free_pages_and_lose_nothing(hints):
    # Freed in whole 4 MiB blocks, so every mode (upstream and reporting need order 10 / 9) has
    # free blocks to skip; the free pages hold stale data, so only hints can avoid sending them.
    g = Guest("256MiB", used="192MiB", free_share=0.75, order=10)
    baseline = g.migrate()  # the guest runs again after it: no resume() needed
    r = g.migrate(hints=hints, dirty_rate="32MiB", bandwidth="4Gbit")
    assert r.mismatched_pages == 0 and r.verified_pages > 0
    assert r.hinted_pages + r.unpopulated_pages > 100 * MiB // 4096
    assert r.bytes_sent < baseline.bytes_sent / 2


def test_bitmap_hints_skip_scattered_free_pages():
    g = Guest("128MiB", scenario="m2")  # free pages scattered one by one
    r = g.migrate(hints="bitmap")
    assert r.mismatched_pages == 0
    assert r.hinted_pages > g.info().stale_free_bytes // 4096 * 0.9
