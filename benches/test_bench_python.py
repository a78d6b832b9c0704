"""Benchmarks through the Python API (pytest-benchmark).

Run with `pytest benches/ --benchmark-columns=median,ops`. The default `pytest` run only
collects `tests/`, so none of this runs there.
"""

import pytest

import vballoon

MiB = 1 << 20


@pytest.fixture(scope="module")
def ring_memory():
    return vballoon.GuestMemory("64MiB")


@pytest.mark.parametrize("threaded", [False, True], ids=["one-thread", "two-threads"])
def test_ring_round_trips(benchmark, ring_memory, threaded):
    result = benchmark(vballoon.pump_queue, ring_memory, 100_000, threaded=threaded)
    assert result.buffers == 100_000


@pytest.mark.parametrize("encoding", ["pfn", "bitmap", "extents", "auto"])
def test_encode_decode_1gib_set(benchmark, encoding):
    npages = 1 << 20  # 4 GiB of PFN space, 1 GiB of it in the set in 4 runs
    pages = vballoon.PageSet(npages, [(i * 65536 * 4, 65536) for i in range(4)])

    def round_trip():
        return [
            vballoon.decode_pages(encoding, m, npages)
            for m in vballoon.encode_pages(encoding, pages)
        ]

    decoded = benchmark(round_trip)
    assert sum(d.count() for d in decoded) == pages.count()


@pytest.mark.parametrize("encoding", ["pfn", "bitmap", "extents"])
def test_inflate_256mib_of_touched_pages(benchmark, encoding):
    with vballoon.Session("512MiB", encoding=encoding, discard="coalesced") as s:

        def setup():
            # Outside the timing: empty the balloon and touch every page again.
            s.set_target(0)
            s.run_until_settled()
            s.memory.populate(0, s.memory.size)

        def inflate():
            s.set_target("256MiB")
            return s.run_until_settled()

        report = benchmark.pedantic(inflate, setup=setup, rounds=5, iterations=1)
        assert report.pages_inflated == 256 * MiB // 4096


@pytest.mark.parametrize("skip_unpopulated", [False, True], ids=["read-all", "skip-unpopulated"])
def test_migrate_idle_1gib(benchmark, skip_unpopulated):
    g = vballoon.Guest("1GiB", used="64MiB")

    def migrate():
        return g.migrate(skip_unpopulated=skip_unpopulated, bandwidth="10Gbit")

    result = benchmark.pedantic(migrate, rounds=3, iterations=1)
    assert result.mismatched_pages == 0
