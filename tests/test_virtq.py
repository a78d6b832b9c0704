"""Virtqueue pair from Python: valid traffic round-trips, a misbehaving guest is caught."""

import struct

import pytest
from hypothesis import given, strategies as st

from vballoon import GuestMemory, VirtqueueError, pump_queue, virtqueue_pair

MiB = 1 << 20
BUF = 0x10000  # buffers live above the rings


def _pair(size=16, **kw):
    mem = GuestMemory(4 * MiB)
    drv, dev = virtqueue_pair(mem, 0, size, **kw)
    return mem, drv, dev


def test_chain_round_trip_with_payload():
    mem, drv, dev = _pair()
    mem.write(BUF, b"hello virtio")
    head = drv.add([(BUF, 5), (BUF + 6, 6)], [(BUF + 0x1000, 8)])
    drv.kick()
    chain = dev.pop()
    assert chain.head == head
    assert chain.segments == [(BUF, 5, False), (BUF + 6, 6, False), (BUF + 0x1000, 8, True)]
    assert chain.read() == b"hellovirtio"
    assert chain.write(b"response-too-long") == 8
    dev.add_used(chain.head, 8)
    assert drv.pop_used() == (head, 8)
    assert mem.read(BUF + 0x1000, 8) == b"response"
    assert dev.pop() is None


chain_spec = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 300)), min_size=1, max_size=40
)


@given(chains=chain_spec, event_idx=st.booleans(), indirect=st.booleans())
def test_random_valid_chains_pop_identical(chains, event_idx, indirect):
    _mem, drv, dev = _pair(16, event_idx=event_idx, indirect=indirect)
    pending = {}
    for n, (nr, nw, length) in enumerate(chains):
        if nr + nw == 0:
            nr = 1
        base = BUF + (n % 8) * 0x4000
        readable = [(base + i * 512, length) for i in range(nr)]
        writable = [(base + 0x2000 + i * 512, length) for i in range(nw)]
        if drv.num_free < (1 if indirect else nr + nw):
            # Ring full: let the device drain everything first.
            _drain(drv, dev, pending)
        head = drv.add(readable, writable)
        pending[head] = [(a, ln, False) for a, ln in readable] + [
            (a, ln, True) for a, ln in writable
        ]
        drv.kick()
    _drain(drv, dev, pending)
    assert not pending


def _drain(drv, dev, pending):
    while (chain := dev.pop()) is not None:
        assert chain.segments == pending[chain.head]
        written = sum(ln for _, ln, w in chain.segments if w)
        dev.add_used(chain.head, written)
    while (used := drv.pop_used()) is not None:
        head, length = used
        assert length == sum(ln for _, ln, w in pending.pop(head) if w)


def _raw_desc(mem, layout, index, addr, length, flags, nxt):
    mem.write(layout.desc_table + 16 * index, struct.pack("<QIHH", addr, length, flags, nxt))


def _publish(mem, layout, heads):
    for slot, head in enumerate(heads):
        mem.write_u16(layout.avail_ring + 4 + 2 * slot, head)
    mem.write_u16(layout.avail_ring + 2, len(heads))


HOSTILE = {
    "head out of range": lambda m, lay: [999],
    "next out of range": lambda m, lay: (_raw_desc(m, lay, 0, BUF, 8, 1, 77), [0])[1],
    "loop": lambda m, lay: (
        _raw_desc(m, lay, 0, BUF, 8, 1, 1),
        _raw_desc(m, lay, 1, BUF, 8, 1, 0),
        [0],
    )[2],
    "outside memory": lambda m, lay: (_raw_desc(m, lay, 0, 4 * MiB - 4, 8, 0, 0), [0])[1],
    "address overflow": lambda m, lay: (_raw_desc(m, lay, 0, 2**64 - 4, 8, 0, 0), [0])[1],
    "writable before readable": lambda m, lay: (
        _raw_desc(m, lay, 0, BUF, 8, 1 | 2, 1),
        _raw_desc(m, lay, 1, BUF, 8, 0, 0),
        [0],
    )[2],
    "indirect with next": lambda m, lay: (_raw_desc(m, lay, 0, BUF, 32, 4 | 1, 1), [0])[1],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_misbehaving_guest_is_a_typed_error_and_needs_reset(case):
    mem, _drv, dev = _pair(16, indirect=True)
    heads = HOSTILE[case](mem, dev.layout)
    _publish(mem, dev.layout, heads)
    with pytest.raises(VirtqueueError):
        dev.pop()
    assert dev.needs_reset
    with pytest.raises(VirtqueueError, match="reset"):
        dev.pop()
    dev.reset()
    assert not dev.needs_reset


@given(garbage=st.binary(min_size=16 * 16, max_size=16 * 16), avail=st.integers(0, 0xFFFF))
def test_random_ring_garbage_never_crashes(garbage, avail):
    mem, _drv, dev = _pair(16)
    lay = dev.layout
    mem.write(lay.desc_table, garbage)
    for slot in range(16):
        mem.write_u16(lay.avail_ring + 4 + 2 * slot, (avail + slot) % 20)
    mem.write_u16(lay.avail_ring + 2, avail)
    for _ in range(20):
        try:
            chain = dev.pop()
        except VirtqueueError:
            assert dev.needs_reset
            break
        if chain is None:
            break
        for addr, length, _ in chain.segments:
            assert addr + length <= mem.size
        dev.add_used(chain.head, 0)


def test_pump_moves_every_buffer():
    mem = GuestMemory(64 * MiB)
    for threaded in (False, True):
        r = pump_queue(mem, 20_000, segments=2, threaded=threaded)
        assert r.buffers == 20_000
        assert r.bytes_read == 20_000 * 64
        assert r.to_dict()["buffers_per_second"] == r.buffers_per_second > 0
