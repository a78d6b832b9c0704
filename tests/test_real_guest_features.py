"""The real Linux driver's other behaviours against the backend: DEFLATE_ON_OOM, free page
reporting, free page hinting, module unload/reload, and a guest killed mid-inflate."""

from __future__ import annotations

import os
import signal
import time

from real_guest_support import (
    MIB,
    PAGE,
    boot,
    inflate_to,
    oom_kills_in,
    populate_free_memory,
    wait_until,
)

from vballoon.api import request
from vballoon.balloon import MIB_PAGES, VhostUserBalloon


def test_deflate_on_oom_gives_pages_back_instead_of_an_oom_kill(uml, tmp_path):
    with VhostUserBalloon(
        tmp_path / "vu.sock", deflate_on_oom=True, free_page_reporting=False
    ) as balloon:
        with boot(uml, balloon, tmp_path / "guest") as guest:
            assert "deflate_on_oom" in balloon.status().negotiated_features
            total0 = guest.meminfo()["MemTotal"]
            inflate_to(balloon, 200)
            # With DEFLATE_ON_OOM the driver keeps ballooned pages in MemTotal (as used).
            info = guest.meminfo()
            assert info["MemTotal"] == total0
            assert info["MemFree"] < 48 * MIB
            # 120 MiB in one buffer: more than the guest has free, so it must deflate.
            r = guest.run("dd if=/dev/zero of=/dev/null bs=120M count=1 2>&1; echo rc=$?", 120)
            assert "rc=0" in r.out, r.out
            s = balloon.status()
            assert s.actual_pages < 200 * MIB_PAGES  # the guest took pages back
            assert s.deflate_buffers > 0
            assert s.inflated_pages == s.actual_pages
            assert (200 * MIB_PAGES - s.actual_pages) * PAGE >= 64 * MIB
            assert oom_kills_in(guest.output()) == []
            assert oom_kills_in(guest.run("dmesg").out) == []
            assert guest.run("echo alive").out.strip() == "alive"  # init was not killed


def test_free_page_reporting_discards_free_blocks_on_the_host(uml, tmp_path):
    with VhostUserBalloon(tmp_path / "vu.sock", free_page_hinting=False) as balloon:
        with boot(uml, balloon, tmp_path / "guest") as guest:
            assert "reporting" in balloon.status().negotiated_features
            # Let the reporting of boot-time free memory settle, then dirty 128 MiB and free it.
            time.sleep(3)
            populate_free_memory(guest, 128)
            blocks_before = guest.ram_allocated_bytes()
            reported_before = balloon.status().pages_reported
            # Linux reports 2 MiB+ free blocks about 2 s after they gather.
            wait_until(
                lambda: (blocks_before - guest.ram_allocated_bytes()) >= 96 * MIB,
                30,
                "the freed 128 MiB to be reported and discarded",
                step=0.1,
            )
            s = balloon.status()
            reported = (s.pages_reported - reported_before) * PAGE
            returned = blocks_before - guest.ram_allocated_bytes()
            assert reported >= returned >= 96 * MIB
            assert s.actual_pages == 0  # reporting is not ballooning: MemTotal stays
            # Reported pages are the guest's again: touching them faults fresh zero pages in.
            populate_free_memory(guest, 128)
            assert guest.ram_allocated_bytes() >= blocks_before - 32 * MIB


def test_free_page_hinting_cmd_id_hints_stop_done(uml, tmp_path):
    api_path = str(tmp_path / "api.sock")
    with VhostUserBalloon(tmp_path / "vu.sock", api_path, free_page_reporting=False) as balloon:
        with boot(uml, balloon, tmp_path / "guest") as guest:
            assert "free_page_hint" in balloon.status().negotiated_features
            free0 = guest.meminfo()["MemFree"]
            assert request(api_path, "GET", "/balloon/hinting/status")[1]["host_cmd"] == 0
            # Without acknowledge_on_stop the host says DONE itself, later.
            body = {"acknowledge_on_stop": False}
            assert request(api_path, "PATCH", "/balloon/hinting/start", body)[0] == 204
            cmd = balloon.status().hint_cmd_id
            assert cmd >= 2
            # The guest answers with the id, hints its free blocks, then STOP (id 0).
            wait_until(
                lambda: (
                    balloon.status().pages_hinted > 0 and balloon.status().hint_guest_cmd_id == 0
                ),
                30,
                "hints then STOP",
            )
            s = balloon.status()
            assert s.hint_cmd_id == cmd  # no DONE yet: the guest still holds the hinted pages
            assert s.pages_hinted * PAGE >= free0 // 2
            held = guest.meminfo()["MemFree"]
            assert held < free0 - s.pages_hinted * PAGE // 2
            status, st = request(api_path, "GET", "/balloon/hinting/status")
            assert status == 200 and (st["host_cmd"], st["guest_cmd"]) == (cmd, 0)
            assert request(api_path, "PATCH", "/balloon/hinting/stop")[0] == 204
            assert balloon.status().hint_cmd_id == 1  # VIRTIO_BALLOON_CMD_ID_DONE
            # On DONE the driver frees what it held.
            wait_until(lambda: guest.meminfo()["MemFree"] > free0 - 16 * MIB, 30, "pages freed")

            # With acknowledge_on_stop (the default) the host answers STOP with DONE itself.
            hinted = balloon.status().pages_hinted
            # The id comes from the call: a fast guest's STOP and the host's DONE may already
            # have replaced it in the status by the time it is read.
            cmd2 = balloon.start_hinting()
            assert cmd2 > cmd
            wait_until(lambda: balloon.status().hint_cmd_id == 1, 30, "DONE after STOP")
            assert balloon.status().pages_hinted > hinted
            wait_until(lambda: guest.meminfo()["MemFree"] > free0 - 16 * MIB, 30, "pages freed")


def unload_reload(uml, tmp_path) -> list[str]:
    """rmmod and insmod twice under a 64 MiB target; returns the device errors seen."""
    with VhostUserBalloon(tmp_path / "vu.sock", amount_mib=64) as balloon:
        with boot(uml, balloon, tmp_path / "guest") as guest:
            wait_until(lambda: balloon.status().actual_pages == 64 * MIB_PAGES, 60, "64 MiB")
            total_inflated = guest.meminfo()["MemTotal"]
            negotiated = balloon.status().negotiated_features
            guest.unload_balloon()
            # Removing the driver deflates everything, then resets the device; virtio_uml
            # tells the backend nothing of the reset (no status, no ring disable): the next
            # SET_FEATURES and ring setup are the renegotiation.
            s = balloon.status()
            assert s.inflated_pages == s.actual_pages == 0
            assert s.connected and s.frontends_served == 1  # same frontend, device reset
            assert guest.meminfo()["MemTotal"] == total_inflated + 64 * MIB
            for _ in range(2):
                buffers = balloon.status().inflate_buffers
                guest.load_balloon()
                wait_until(lambda: balloon.status().driver_ok, 30, "DRIVER_OK again")
                assert balloon.status().negotiated_features == negotiated
                # The target held by the device reaches the new driver instance.
                wait_until(
                    lambda: balloon.status().actual_pages == 64 * MIB_PAGES, 60, "re-inflated"
                )
                assert guest.meminfo()["MemTotal"] == total_inflated
                assert balloon.status().inflate_buffers >= buffers + 64  # a fresh inflate
                guest.unload_balloon()
                assert balloon.status().inflated_pages == 0
                assert guest.meminfo()["MemTotal"] == total_inflated + 64 * MIB
            assert balloon.status().frontends_served == 1
            return balloon.status().errors


def test_unloading_and_reloading_the_driver_resets_and_renegotiates(uml, tmp_path):
    # No device errors either: the old rings, freed by the guest at rmmod, are not served.
    assert unload_reload(uml, tmp_path) == []


def test_a_guest_killed_mid_inflate_leaves_the_backend_serving_the_next(uml, tmp_path):
    with VhostUserBalloon(tmp_path / "vu.sock", free_page_reporting=False) as balloon:
        guest = boot(uml, balloon, tmp_path / "g1", mem="1G")
        with guest:
            target = 900 * MIB_PAGES
            balloon.set_amount_mib(900)
            wait_until(lambda: balloon.status().inflate_buffers > 0, 30, "the inflate to start")
            os.killpg(guest.pid, signal.SIGKILL)
            at_kill = balloon.status().inflated_pages
        assert at_kill < target, "the inflate finished before the kill: nothing was tested"
        wait_until(lambda: not balloon.status().connected, 30, "the disconnect")
        s = balloon.status()
        assert s.frontends_served == 1
        assert not guest.alive() and guest.group_pids() == []

        balloon.set_amount_mib(100)
        with boot(uml, balloon, tmp_path / "g2", mem="256M") as second:
            wait_until(lambda: balloon.status().actual_pages == 100 * MIB_PAGES, 60, "100 MiB")
            s = balloon.status()
            assert s.connected and s.frontends_served == 2
            assert s.inflated_pages == 100 * MIB_PAGES  # the dead guest's pages are forgotten
            total = second.meminfo()["MemTotal"]
            inflate_to(balloon, 0)
            assert second.meminfo()["MemTotal"] == total + 100 * MIB
