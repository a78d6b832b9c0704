"""A real Linux kernel (User-Mode Linux, its own virtio_balloon driver) against `vballoon serve`'s
backend: inflate, deflate, statistics, and the HTTP API driving it."""

from __future__ import annotations

from real_guest_support import MIB, PAGE, boot, inflate_to, populate_free_memory, wait_until

from vballoon.api import request
from vballoon.balloon import MIB_PAGES, VhostUserBalloon


def test_inflate_shrinks_memtotal_and_returns_ram_file_blocks_deflate_restores(uml, tmp_path):
    with VhostUserBalloon(tmp_path / "vu.sock", deflate_on_oom=False) as balloon:
        with boot(uml, balloon, tmp_path / "guest", mem="256M") as guest:
            s = balloon.status()
            assert s.connected and s.driver_ok
            assert "deflate_on_oom" not in s.negotiated_features
            assert s.ram_bytes > 200 * MIB  # virtio_uml shares the RAM file (less the kernel image)
            total0 = guest.meminfo()["MemTotal"]
            # Nearly all free memory touched once: the pages the balloon takes are populated.
            populate_free_memory(guest, 160)
            blocks0 = guest.ram_allocated_bytes()
            discarded0 = balloon.status().pages_discarded

            inflate_to(balloon, 128)
            s = balloon.status()
            assert s.actual_pages == s.inflated_pages == 128 * MIB_PAGES
            assert s.inflate_buffers >= 128 * MIB_PAGES // 256  # at most 256 PFNs per buffer
            assert guest.meminfo()["MemTotal"] == total0 - 128 * MIB
            dropped = blocks0 - guest.ram_allocated_bytes()
            discarded = (s.pages_discarded - discarded0) * PAGE
            assert discarded == 128 * MIB
            # The RAM file gave back the ballooned pages that were populated: nearly all of
            # them after the dd above; never more than the balloon took (plus reporting).
            assert dropped >= 100 * MIB, f"only {dropped / MIB:.1f} MiB returned"
            assert s.ram_backed_bytes <= s.ram_bytes - 100 * MIB

            inflate_to(balloon, 0)
            s = balloon.status()
            assert s.inflated_pages == 0 and s.deflate_buffers >= 128 * MIB_PAGES // 256
            assert guest.meminfo()["MemTotal"] == total0
            # The deflated pages are usable again: the guest can fill 150 MiB.
            populate_free_memory(guest, 150)
    assert not guest.alive()


def test_statistics_agree_with_proc_meminfo(uml, tmp_path):
    with VhostUserBalloon(tmp_path / "vu.sock", stats_polling_interval_s=3600) as balloon:
        with boot(uml, balloon, tmp_path / "guest") as guest:
            assert "stats_vq" in balloon.status().negotiated_features
            # The guest's first sample, then the poller's immediate poll; then it is quiet for
            # an hour and only this test asks.
            wait_until(lambda: balloon.status().stats_updates >= 2, 30, "the first stats")
            for _ in range(3):
                before = guest.meminfo()
                n = balloon.status().stats_updates
                assert balloon.backend.request_stats()
                wait_until(lambda n=n: balloon.status().stats_updates > n, 30, "a stats update")
                after = guest.meminfo()
                stats = balloon.statistics().to_dict()
                assert stats["total_memory"] == before["MemTotal"] == after["MemTotal"]
                # Sampled between the two reads, while neither `cat` ran: within what changed
                # between the reads, plus the reading commands' own pages (a few hundred KiB).
                slack = 2 * MIB
                for ours, theirs in (
                    ("free_memory", "MemFree"),
                    ("available_memory", "MemAvailable"),
                ):
                    lo = min(before[theirs], after[theirs]) - slack
                    hi = max(before[theirs], after[theirs]) + slack
                    assert lo <= stats[ours] <= hi, (ours, stats[ours], before[theirs])
                caches = before["Cached"] + before["Buffers"]
                assert abs(stats["disk_caches"] - caches) <= slack + abs(
                    after["Cached"] - before["Cached"]
                )
                assert stats.get("oom_kill", 0) == 0  # tag 10, sent by Linux >= 6.12
                assert stats["minor_faults"] > 0


def test_the_api_drives_a_real_guest(uml, tmp_path):
    api_path = str(tmp_path / "api.sock")
    with VhostUserBalloon(tmp_path / "vu.sock", api_path) as balloon:
        body = {"amount_mib": 32, "deflate_on_oom": False, "stats_polling_interval_s": 1}
        assert request(api_path, "PUT", "/balloon", body)[0] == 204
        with boot(uml, balloon, tmp_path / "guest") as guest:
            # The target set before boot reaches the guest as soon as its driver is up.
            wait_until(lambda: balloon.status().actual_pages == 32 * MIB_PAGES, 60, "32 MiB")
            total0 = guest.meminfo()["MemTotal"] + 32 * MIB
            # Offers are fixed once the guest negotiated: PUT is refused, PATCH works.
            status, fault = request(api_path, "PUT", "/balloon", body)
            assert status == 400 and "negotiated" in fault["fault_message"]
            status, fault = request(
                api_path, "PATCH", "/balloon/statistics", {"stats_polling_interval_s": 0}
            )
            assert status == 400 and "negotiated" in fault["fault_message"]
            status, fault = request(api_path, "PATCH", "/balloon", {"amount_mib": 100_000})
            assert status == 400 and "larger than the guest" in fault["fault_message"]
            assert request(api_path, "PATCH", "/balloon", {"amount_mib": 64})[0] == 204
            wait_until(lambda: balloon.status().actual_pages == 64 * MIB_PAGES, 60, "64 MiB")
            assert guest.meminfo()["MemTotal"] == total0 - 64 * MIB
            wait_until(
                lambda: (
                    balloon.statistics().actual_mib == 64
                    and balloon.statistics().guest.total_memory == total0 - 64 * MIB
                ),
                30,
                "statistics polled after the inflate",
            )
            status, st = request(api_path, "GET", "/balloon/statistics")
            assert status == 200
            assert (st["target_mib"], st["actual_mib"], st["actual_pages"]) == (64, 64, 16384)
            for name in ("free_memory", "available_memory", "major_faults", "minor_faults"):
                assert isinstance(st[name], int), name
            assert st["pages_discarded"] >= 64 * MIB_PAGES
            assert 0 < st["ram_backed_bytes"] <= st["ram_bytes"] - 64 * MIB
            assert request(api_path, "PATCH", "/balloon", {"amount_mib": 0})[0] == 204
            wait_until(lambda: balloon.status().actual_pages == 0, 60, "deflated")
            assert guest.meminfo()["MemTotal"] == total0
