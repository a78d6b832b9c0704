"""The objects whose methods `hostile_driver.py` drives: one live (and, where it matters, one
closed) instance of every public class, made once and remade when a driven call closes it."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from hypothesis import strategies as st

import vballoon


class Receivers:
    """Objects whose methods are driven, made once (cheap ones afresh when used up)."""

    def __init__(self) -> None:
        self.mem = vballoon.GuestMemory("1MiB")
        self.memfd = vballoon.GuestMemory("1MiB", backing="memfd")
        self.ring_mem = vballoon.GuestMemory("1MiB")
        self.drv, self.dev = vballoon.virtqueue_pair(self.ring_mem, 0, 16)
        self.drv.add(readable=[(0x80000, 64)], writable=[(0x81000, 64)])
        self.drv.kick()
        self.chain = self.dev.pop()
        self.session = vballoon.Session("16MiB")
        self.session.set_target("1MiB")
        self.report = self.session.run_until_settled()
        self.closed = vballoon.Session("4MiB")
        self.closed.close()
        self.guest = vballoon.Guest("8MiB", used="1MiB")
        self.result = self.guest.migrate(timeout=5.0)
        self.rounds = list(self.result.per_round)
        self.dest = self.received()
        self.pump = vballoon.pump_queue(self.mem, 8)
        self.inflate = vballoon.bench_inflate_table("4MiB", rounds=1)
        self.huge = vballoon.bench_huge_table(
            "4MiB", rounds=1, backings=["thp"], fragmented=False, reserve=False
        )
        self.migrate_rows = vballoon.bench_migrate_rows(
            ["m1"], ["off"], guest="4MiB", repetitions=1
        )
        self.thp = vballoon.GuestMemory("4MiB", backing="thp")
        self.progress = vballoon.BenchProgress()
        # Sockets by absolute path in the driver's own directory (made by `run`).
        self.vhost = vballoon.VhostUserBackend(os.path.abspath("recv-vu.sock"), queue_size=16)
        self.vhost.set_target(8)
        self.vstatus = self.vhost.status()
        self.vhost_closed = vballoon.VhostUserBackend(os.path.abspath("recv-closed.sock"))
        self.vhost_closed.close()
        self.balloon = self.new_balloon()
        # Snapshots taken now: a driven close() may close their source later.
        self.samples = [self.session.stats(), self.vhost.stats()]
        self.counters = self.session.device_counters()
        self.balloon_closed = vballoon.VhostUserBalloon(os.path.abspath("recv-bc.sock"))
        self.balloon_closed.close()

    def received(self) -> vballoon.DestReport:
        """What a destination reports after receiving `self.guest` over loopback TCP."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out: list[vballoon.DestReport] = []
        t = threading.Thread(
            target=lambda: out.append(
                vballoon.listen_migration(f"127.0.0.1:{port}", "8MiB", timeout=10)
            )
        )
        t.start()
        for _ in range(200):  # until the listener has bound its port
            try:
                self.guest.migrate(to=f"127.0.0.1:{port}", timeout=5.0)
                break
            except vballoon.MigrationError:
                time.sleep(0.02)
        t.join()
        return out[0]

    @staticmethod
    def new_balloon() -> vballoon.VhostUserBalloon:
        return vballoon.VhostUserBalloon(
            os.path.abspath("recv-b.sock"), os.path.abspath("recv-api.sock"), amount_mib=1
        )

    def close(self) -> None:
        for obj in (self.vhost, self.balloon, self.session):
            obj.close()

    def of(self, cls: str, data: st.DataObject | None) -> list[Any]:
        """The receivers to drive a method of class `cls` on."""
        if cls == "Session":
            if self.session.closed:
                self.session = vballoon.Session("16MiB")
            return [self.session, self.closed]
        if cls == "Closeable":  # `with` closes it: a fresh one each time
            return [vballoon.Guest("4MiB", used="1MiB")]
        if cls == "Guest":
            if self.guest.closed:  # closed by a driven close() or __exit__()
                self.guest = vballoon.Guest("8MiB", used="1MiB")
            return [self.guest]
        if cls == "VhostUserBackend":
            try:
                self.vhost.status()
            except vballoon.ConfigError:  # closed by a driven close() or __exit__()
                self.vhost = vballoon.VhostUserBackend(os.path.abspath("recv-vu.sock"))
            return [self.vhost, self.vhost_closed]
        if cls == "VhostUserBalloon":
            if self.balloon._closed:
                self.balloon = self.new_balloon()
            return [self.balloon, self.balloon_closed]
        return {
            "GuestMemory": [self.mem, self.memfd, self.thp],
            "GuestView": [self.mem.view(0, 4096)],
            "PageSet": [vballoon.PageSet(1000, [(3, 5)])],
            "QueueLayout": [self.drv.layout],
            "VirtqDriver": [self.drv],
            "VirtqDevice": [self.dev],
            "Chain": [self.chain],
            "InflateReport": [self.report],
            "MigrationResult": [self.result],
            "DestReport": [self.dest],
            "MigrationProgress": [self.guest.progress()],
            "GuestInfo": [self.guest.info()],
            "GuestStats": self.samples,
            "DeviceCounters": [self.counters],
            "PumpResult": [self.pump],
            "InflateTable": [self.inflate],
            "InflateRow": self.inflate.rows[:2],
            "HugeTable": [self.huge],
            "HugeRow": self.huge.rows[:2],
            "HugePageStats": [self.thp.huge_page_stats(), self.memfd.huge_page_stats()],
            "MigrateRow": self.migrate_rows,
            "BenchSnapshot": [self.progress.snapshot()],
            "RoundStats": self.rounds[:2],
            "BenchProgress": [self.progress],
            "VhostStatus": [self.vstatus],
        }[cls]
