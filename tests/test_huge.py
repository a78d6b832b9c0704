"""Huge-page guest RAM from Python: THP and hugetlbfs backings, their stats, the balloon giving
whole 2 MiB pages back, typed errors, and bench I4 at a small size.

Hugetlb tests reserve pages through /proc/sys/vm/nr_hugepages (root) for their run and put the
original value back even on failure; they skip, saying why, only where the kernel refuses.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from vballoon import ConfigError, GuestMemory, GuestMemoryError, Session, bench_huge_table

MiB = 1 << 20
HUGE = 2 * MiB
NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")


@pytest.fixture
def hugetlb_pages() -> Iterator[int]:
    """Adds 64 pages of 2 MiB to the pool for the test; restores the old size after."""
    try:
        orig = int(NR_HUGEPAGES.read_text())
    except OSError as e:
        pytest.skip(f"no hugetlb pool here: {e}")
    want = orig + 64
    try:
        NR_HUGEPAGES.write_text(str(want))
        got = int(NR_HUGEPAGES.read_text())
        if got < want:
            pytest.skip(f"the kernel found {got} of {want} huge pages")
        yield 64
    except PermissionError as e:
        pytest.skip(f"cannot reserve hugetlb pages: {e}")
    finally:
        try:
            NR_HUGEPAGES.write_text(str(orig))
        except OSError:
            pass


def test_thp_memory_is_on_huge_pages_and_gives_them_back():
    mem = GuestMemory("64MiB", backing="thp")
    assert mem.backing == "thp" and mem.host_page_size == HUGE
    mem.fill(0, "64MiB", 0x42)
    st = mem.huge_page_stats()
    assert st.huge_bytes >= 4 * HUGE and st.pool is None
    mem.discard(0, "32MiB")
    after = mem.huge_page_stats()
    assert after.rss_bytes <= st.rss_bytes - 32 * MiB
    assert after.to_dict()["backing"] == "thp"
    assert mem.is_zero(0, 32 * MiB)


def test_hugetlb_memory_counts_pool_pages(hugetlb_pages):
    mem = GuestMemory("32MiB", backing="hugetlb")
    assert mem.memfd is not None and mem.host_page_size == HUGE
    mem.fill(0, "32MiB", 1)
    st = mem.huge_page_stats()
    assert st.huge_bytes == 32 * MiB == st.file_allocated_bytes
    assert st.pool is not None
    free = st.pool.free
    mem.discard(HUGE, 3 * HUGE)
    st = mem.huge_page_stats()
    assert st.pool is not None and st.pool.free == free + 3
    assert st.to_dict()["pool"]["free"] == free + 3
    assert st.file_allocated_bytes == 26 * MiB


def test_huge_backings_fail_with_typed_errors():
    with pytest.raises(GuestMemoryError, match="multiple of"):
        GuestMemory(HUGE + 4096, backing="thp")
    with pytest.raises(GuestMemoryError, match="nr_hugepages"):
        GuestMemory("200GiB", backing="hugetlb")
    with pytest.raises(ConfigError, match="hugetlb"):
        GuestMemory("64MiB", backing="gigantic")


@pytest.mark.parametrize("backing", ["thp", "hugetlb"])
def test_balloon_in_2mib_blocks_returns_host_memory(backing, request):
    if backing == "hugetlb":
        request.getfixturevalue("hugetlb_pages")
    with Session("64MiB", backing=backing, alloc_order=9) as s:
        s.memory.populate(0, s.memory.size)
        before = s.memory.huge_page_stats()
        s.set_target("48MiB")
        assert s.run_until_settled().outcome == "settled"
        assert s.device_counters().host_pages_filled == 24
        after = s.memory.huge_page_stats()
        if backing == "hugetlb":
            assert after.pool is not None and before.pool is not None
            assert after.pool.free - before.pool.free == 24
        else:
            assert before.rss_bytes - after.rss_bytes >= 48 * MiB


def test_bench_huge_table_small_thp():
    t = bench_huge_table("64MiB", "48MiB", rounds=1, backings=["thp"])
    rows = {r.variant: r for r in t.rows}
    assert rows["2 MiB blocks"].verified and rows["2 MiB blocks"].returned_bytes >= 46 * MiB
    assert rows["fragmented (wait): every other page"].returned_bytes < HUGE
    assert t.to_dict()["rows"][0] == t.rows[0].to_dict()
