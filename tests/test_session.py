"""The balloon end to end from Python: every encoding, real memory returned, nothing lost."""

import numpy as np
import pytest

from vballoon import BalloonError, ConfigError, PageSet, Session, bench_inflate_table

MiB = 1 << 20
PAGE = 4096


@pytest.mark.parametrize("encoding", ["pfn", "bitmap", "extents", "auto"])
@pytest.mark.parametrize("backing", ["anonymous", "memfd"])
def test_inflate_deflate_returns_memory_and_keeps_guest_data(encoding, backing):
    with Session("128MiB", encoding=encoding, backing=backing) as s:
        s.guest_fill("32MiB")
        s.memory.populate(0, s.memory.size)  # every page touched, as in the published runs
        sums = s.guest_checksums()
        free_before = s.guest_free_bytes
        resident_before = s.resident_bytes()

        s.set_target("64MiB")
        r = s.run_until_settled()
        assert r.outcome == "settled"
        assert s.actual_pages == r.end_pages == 64 * MiB // PAGE
        balloon = s.balloon_pages()
        assert balloon.count() == 64 * MiB // PAGE
        dropped = resident_before - s.resident_bytes()
        assert abs(dropped - 64 * MiB) <= 0.05 * 64 * MiB
        assert s.guest_checksums() == sums  # pages not ballooned are untouched
        # The host freed them: ballooned pages read back as zero, and the numpy view agrees.
        words = np.frombuffer(balloon, dtype=np.uint64)
        assert int(np.unpackbits(words.view(np.uint8)).sum()) == balloon.count()
        for start, length in balloon.runs()[:50]:
            assert s.memory.is_zero(start * PAGE, length * PAGE)

        s.set_target(0)
        r = s.run_until_settled()
        assert r.pages_deflated == 64 * MiB // PAGE and s.actual_pages == 0
        assert s.guest_free_bytes == free_before
        assert s.guest_checksums() == sums


def test_stats_are_consistent():
    with Session("64MiB") as s:
        s.guest_fill("8MiB")
        s.set_target("16MiB")
        s.run_until_settled()
        st = s.stats()
        assert st.free_memory == s.guest_free_bytes
        # Without DEFLATE_ON_OOM the guest's total shrinks by the balloon, as Linux's does.
        assert st.total_memory == 48 * MiB
        assert st.free_memory + 8 * MiB <= st.total_memory
        assert st.to_dict()["free_memory"] == st.free_memory
        assert st.oom_kills is None  # a tag the guest did not send


def test_stats_off_without_stats_vq():
    with Session("16MiB", stats=False) as s:
        assert s.stats() is None


def test_deflate_on_oom_lets_an_allocation_succeed():
    for deflate_on_oom in (False, True):
        with Session("32MiB", deflate_on_oom=deflate_on_oom) as s:
            s.set_target(s.guest_free_bytes)  # balloon everything the guest can give
            s.run_until_settled()
            if deflate_on_oom:
                pfn = s.guest_alloc(0)
                assert 0 <= pfn < s.memory.pages
                assert s.actual_pages < s.target_pages
            else:
                with pytest.raises(Exception, match=r"(?i)memory"):
                    s.guest_alloc(0)


def test_threaded_mode_settles_and_closes():
    with Session("64MiB", mode="threaded", encoding="extents") as s:
        s.set_target("32MiB")
        assert s.run_until_settled(timeout=20).outcome == "settled"
        s.set_target(0)
        assert s.run_until_settled(timeout=20).end_pages == 0
    with pytest.raises(ConfigError, match="closed"):
        s.actual_pages  # noqa: B018


def test_v3_abi_mode():
    with Session("64MiB", abi="v3", encoding="bitmap") as s:
        s.set_target("8MiB")
        assert s.run_until_settled().outcome == "settled"
        assert isinstance(s.balloon_pages(), PageSet)


def test_bad_configuration_is_a_config_error():
    with pytest.raises(ConfigError, match="encoding"):
        Session("16MiB", encoding="morse")
    with pytest.raises(ConfigError, match="mode"):
        Session("16MiB", mode="warp")
    assert issubclass(BalloonError, Exception)


def test_bench_inflate_table_small():
    t = bench_inflate_table("64MiB", "48MiB", rounds=1)
    names = [r.name for r in t.rows]
    assert {"pfn", "bitmap", "extents", "auto"} <= set(names)
    for row in t.rows:
        assert row.inflate_secs > 0
    d = t.to_dict()
    assert d["rows"] == [r.to_dict() for r in t.rows] and "text" not in d
    assert (d["guest_bytes"], d["inflate_bytes"]) == (64 * MiB, 48 * MiB)


@pytest.mark.parametrize("discard", ["coalesced", "per-page", "vectored", "parallel"])
def test_every_discard_policy_returns_the_memory(discard):
    with Session("256MiB", discard=discard) as s:
        s.memory.populate(0, s.memory.size)
        before = s.resident_bytes()
        s.set_target("128MiB")  # above the parallel policy's 64 MiB threshold
        r = s.run_until_settled()
        assert r.outcome == "settled"
        assert abs(before - s.resident_bytes() - 128 * MiB) <= 0.05 * 128 * MiB
        assert s.device_counters().discard_errors == 0
