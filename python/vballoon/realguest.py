"""Real-guest measurements: a User-Mode Linux guest's own virtio_balloon driver against the
vhost-user backend. Bench R1 (inflate 75% of a guest, beside the modelled PFN driver) and R2
(free page hinting and reporting), and the demo's real-guest section."""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from vballoon import _native
from vballoon.balloon import MIB_PAGES, VhostUserBalloon
from vballoon.realguest_results import (
    BalloonMove,
    DemoStep,
    HintRun,
    R1Result,
    R1Round,
    R2Result,
    ReportingRun,
)
from vballoon.uml import Uml
from vballoon.umlguest import UmlGuest

MIB = 1 << 20
PAGE = 4096


class _Rig:
    """A balloon backend and a booted guest with the driver bound, in a temp dir it owns."""

    def __init__(self, uml: Uml, mem_mib: int, **balloon_kw: Any) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="vballoon-realguest-")
        tmp = Path(self._tmp.name)
        # Guest RAM on tmpfs where there is one: shmem, like the modelled guest's memfd.
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._ram = tempfile.TemporaryDirectory(prefix="vballoon-ram-", dir=shm)
        self.balloon = VhostUserBalloon(tmp / "vu.sock", **balloon_kw)
        self.guest = UmlGuest(
            uml,
            mem=f"{mem_mib}M",
            balloon_socket=self.balloon.socket,
            workdir=tmp / "guest",
            ramdir=self._ram.name,
        )
        try:
            t0 = time.monotonic()
            self.guest.start()
            self.boot_secs = time.monotonic() - t0
            t0 = time.monotonic()
            self.guest.load_balloon()
            if not _wait(lambda: self.balloon.status().driver_ok, 30):
                raise TimeoutError("the guest's driver did not reach DRIVER_OK")
            self.probe_secs = time.monotonic() - t0
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.guest.close()
        self.balloon.close()
        self._tmp.cleanup()
        self._ram.cleanup()

    def __enter__(self) -> _Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def populate(self, mib: int) -> None:
        """Touch `mib` MiB of guest memory and free it: free pages backed on the host."""
        self.guest.run(f"dd if=/dev/zero of=/dev/null bs={mib}M count=1 2>/dev/null", 300)

    def move_to(self, mib: int, timeout: float = 300) -> BalloonMove:
        """Set the target and time the guest's driver reaching it; what it cost the host."""
        b = self.balloon
        before = b.status()
        blocks0 = self.guest.ram_allocated_bytes()
        guest_cpu0, host_cpu0 = self.guest.cpu_secs(), time.process_time()
        t0 = time.monotonic()
        b.set_amount_mib(mib)
        if not b.backend.wait_for(actual_pages=mib * MIB_PAGES, timeout=timeout):
            raise TimeoutError(f"the guest did not reach {mib} MiB in {timeout} s")
        secs = time.monotonic() - t0
        after = b.status()
        return BalloonMove(
            secs=secs,
            # CPU spent meanwhile by the guest (UML's processes) and by this process (the
            # backend's threads; the waiting Python thread uses next to none).
            guest_cpu_secs=self.guest.cpu_secs() - guest_cpu0,
            backend_cpu_secs=time.process_time() - host_cpu0,
            pages=abs(after.actual_pages - before.actual_pages),
            inflate_buffers=after.inflate_buffers - before.inflate_buffers,
            deflate_buffers=after.deflate_buffers - before.deflate_buffers,
            discard_calls=after.discard_calls - before.discard_calls,
            pages_discarded=after.pages_discarded - before.pages_discarded,
            blocks_returned_bytes=blocks0 - self.guest.ram_allocated_bytes(),
        )


def _wait(cond: Any, timeout: float, step: float = 0.0005) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def bench_r1(uml: Uml, guest_mib: int = 2048, inflate_mib: int = 1536, rounds: int = 3) -> R1Result:
    """R1: the real driver inflating `inflate_mib` of a `guest_mib` guest whose free memory was
    touched first (so every ballooned page is backed), `rounds` times; then the modelled PFN
    driver on the same sizes (memfd-backed, as UML's RAM is a shared file), same process."""
    samples = []
    with _Rig(uml, guest_mib, free_page_reporting=False, free_page_hinting=False) as rig:
        total0 = rig.guest.meminfo()["MemTotal"]
        for _ in range(rounds):
            free = rig.guest.meminfo()["MemFree"] // MIB
            rig.populate(max(64, free - 48))
            inflate = rig.move_to(inflate_mib)
            drop = total0 - rig.guest.meminfo()["MemTotal"]
            inflate = dataclasses.replace(inflate, memtotal_drop_bytes=drop)
            samples.append(R1Round(inflate, rig.move_to(0)))
        boot_secs, probe_secs = rig.boot_secs, rig.probe_secs
    model = _native.bench_inflate_table(
        f"{guest_mib}MiB", f"{inflate_mib}MiB", rounds=rounds, backing="memfd"
    )
    rows = {r.name: r for r in model.rows}
    real = statistics.median(s.inflate.secs for s in samples)
    pfn, coalesce = rows["pfn"].inflate_secs, rows["pfn+coalesce"].inflate_secs
    floor = rows["floor: one discard"].inflate_secs
    return R1Result(
        guest_mib=guest_mib,
        inflate_mib=inflate_mib,
        rounds=rounds,
        boot_secs=boot_secs,
        probe_secs=probe_secs,
        real_inflate_secs=real,
        real_deflate_secs=statistics.median(s.deflate.secs for s in samples),
        real=samples,
        model_pfn_secs=pfn,
        model_pfn_coalesce_secs=coalesce,
        floor_one_discard_secs=floor,
        floor_per_page_secs=rows["floor: per-page discard"].inflate_secs,
        model_rows=list(model.rows),
        ratio_to_model_pfn=real / pfn,
        ratio_to_model_pfn_coalesce=real / coalesce,
        ratio_to_floor=real / floor,
    )


def hint_run(rig: _Rig, timeout: float = 60) -> HintRun:
    """One free page hinting run, timed from the new cmd id to the guest's STOP."""
    b = rig.balloon.backend
    free = rig.guest.meminfo()["MemFree"]
    pages0 = b.status().pages_hinted
    t0 = time.monotonic()
    cmd = b.start_hinting()
    seen = [False]

    def stopped() -> bool:
        s = b.status()
        if s.hint_guest_cmd_id == cmd:
            seen[0] = True
            return False
        return s.hint_guest_cmd_id == 0 and (seen[0] or s.pages_hinted > pages0)

    if not _wait(stopped, timeout):
        raise TimeoutError("the guest did not finish its hint run")
    secs = time.monotonic() - t0
    b.stop_hinting()
    hinted = b.status().pages_hinted - pages0
    return HintRun(secs=secs, cmd_id=cmd, pages_hinted=hinted, guest_free_bytes=free)


def reporting_run(rig: _Rig, mib: int, timeout: float = 60) -> ReportingRun:
    """Free `mib` MiB of touched memory; time until the host has discarded 90% of it."""
    s0 = rig.balloon.status()
    rig.populate(mib)
    blocks0 = rig.guest.ram_allocated_bytes()
    t0 = time.monotonic()
    goal = int(mib * MIB * 0.9)
    # (seconds, pages reported, bytes returned) at each change of the reported count: shows
    # the guest's pacing, and that each report's blocks are gone by the same 5 ms sample.
    timeline: list[tuple[float, int, int]] = []

    def done() -> bool:
        reported = rig.balloon.status().pages_reported - s0.pages_reported
        returned = blocks0 - rig.guest.ram_allocated_bytes()
        if not timeline or timeline[-1][1] != reported:
            timeline.append((time.monotonic() - t0, reported, returned))
        return returned >= goal

    if not _wait(done, timeout, 0.005):
        raise TimeoutError(f"{mib} MiB freed in the guest was not reported in {timeout} s")
    secs = time.monotonic() - t0
    s1 = rig.balloon.status()
    return ReportingRun(
        freed_mib=mib,
        secs_to_90pct_discarded=secs,
        pages_reported=s1.pages_reported - s0.pages_reported,
        blocks_returned_bytes=blocks0 - rig.guest.ram_allocated_bytes(),
        timeline=timeline,
    )


def bench_r2(uml: Uml, guest_mib: int = 2048, rounds: int = 3) -> R2Result:
    """R2: hint runs over the idle guest, and reporting of memory the guest touched and freed."""
    with _Rig(uml, guest_mib, free_page_reporting=True, free_page_hinting=True) as rig:
        time.sleep(3)  # let boot-time reporting settle
        hints = [hint_run(rig) for _ in range(rounds)]
        reports = [reporting_run(rig, guest_mib // 2) for _ in range(rounds)]
    secs = statistics.median(h.secs for h in hints)
    return R2Result(
        guest_mib=guest_mib,
        rounds=rounds,
        hint_secs=secs,
        hint_ms_per_gib_guest=secs * 1e3 / (guest_mib / 1024),
        hints=hints,
        report_secs=statistics.median(r.secs_to_90pct_discarded for r in reports),
        reports=reports,
    )


def demo(uml: Uml, mem_mib: int = 1024, inflate_mib: int = 768) -> list[DemoStep]:
    """The demo's real-guest steps: boot, bind the driver, inflate, deflate, statistics."""
    rows: list[DemoStep] = []
    with _Rig(uml, mem_mib, stats_polling_interval_s=1) as rig:
        g, b = rig.guest, rig.balloon

        def row(step: str, secs: float, **extra: Any) -> None:
            info = g.meminfo()
            rows.append(
                DemoStep(
                    step=step,
                    ms=secs * 1e3,
                    memtotal_mib=info["MemTotal"] / MIB,
                    ram_file_mib=g.ram_allocated_bytes() / MIB,
                    **extra,
                )
            )

        row("boot (UML, host root on hostfs)", rig.boot_secs)
        row("insmod virtio_balloon -> DRIVER_OK", rig.probe_secs)
        t0 = time.monotonic()
        rig.populate(inflate_mib)
        row(f"guest touches and frees {inflate_mib} MiB (dd)", time.monotonic() - t0)
        r = rig.move_to(inflate_mib)
        row(
            f"inflate {inflate_mib} MiB",
            r.secs,
            buffers=r.inflate_buffers,
            discards=r.discard_calls,
        )
        r = rig.move_to(0)
        row("deflate to 0", r.secs, buffers=r.deflate_buffers)
        n = b.status().stats_updates
        t0 = time.monotonic()
        b.backend.request_stats()
        _wait(lambda: b.status().stats_updates > n, 10)
        st = b.statistics().guest
        row(
            "statistics poll",
            time.monotonic() - t0,
            free_mib=(st.free_memory or 0) / MIB,
            available_mib=(st.available_memory or 0) / MIB,
        )
    return rows
