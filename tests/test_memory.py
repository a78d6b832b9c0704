"""GuestMemory from Python: real mmap, discard, residency, zero-copy numpy views."""

import os

import numpy as np
import pytest

import vballoon
from vballoon import ConfigError, GuestMemory, GuestMemoryError, VBalloonError

MiB = 1 << 20


@pytest.mark.parametrize("backing", ["anonymous", "memfd"])
def test_discard_reads_back_zero_and_returns_memory(backing):
    mem = GuestMemory("64MiB", backing=backing)
    mem.fill(0, "64MiB", 0x5A)
    assert mem.resident_pages() == 64 * MiB // 4096
    mem.discard(16 * MiB, 32 * MiB)
    # Residency first: reading a discarded page maps the zero page, which mincore counts.
    assert mem.resident_pages() == 32 * MiB // 4096
    assert mem.is_zero(16 * MiB, 32 * MiB)
    assert mem.read(16 * MiB - 1, 1) == b"\x5a"


def test_numpy_view_is_zero_copy_and_writable():
    mem = GuestMemory(4 * MiB)
    words = np.frombuffer(mem.view(4096, 8192), dtype=np.uint64)
    assert words.shape == (1024,)
    words[3] = 0x1122334455667788
    assert mem.read_u64(4096 + 24) == 0x1122334455667788
    mem.write_u32(4096, 0xDEADBEEF)
    assert words[0] & 0xFFFFFFFF == 0xDEADBEEF


def test_view_keeps_memory_alive():
    view = GuestMemory(MiB).view(0, 4096)
    arr = np.frombuffer(view, dtype=np.uint8)
    arr[:] = 3
    assert bytes(memoryview(view)[:2]) == b"\x03\x03"


def test_memfd_is_shared_with_a_second_mapping():
    mem = GuestMemory("8MiB", backing="memfd")
    other = GuestMemory.from_memfd(mem.memfd, mem.size)
    mem.write(8192, b"hello")
    assert other.read(8192, 5) == b"hello"
    other.discard(8192, 4096)
    assert mem.read(8192, 5) == b"\0" * 5


def test_out_of_range_and_bad_arguments_raise_typed_errors():
    mem = GuestMemory(MiB)
    with pytest.raises(GuestMemoryError, match="outside guest RAM"):
        mem.read(MiB - 2, 4)
    with pytest.raises(GuestMemoryError):
        mem.write_u64(2**64 - 4, 1)
    with pytest.raises(GuestMemoryError, match="page aligned"):
        mem.discard(1, 4096)
    with pytest.raises(ConfigError, match="cannot parse size"):
        GuestMemory("8 potatoes")
    with pytest.raises(ConfigError, match="backing"):
        GuestMemory(MiB, backing="disk")
    with pytest.raises(GuestMemoryError, match="positive multiple"):
        GuestMemory(4095)
    assert issubclass(GuestMemoryError, VBalloonError)
    assert issubclass(ConfigError, VBalloonError)


def test_large_guest_is_unpopulated_until_touched():
    mem = GuestMemory("64GiB")
    before = vballoon.rss_bytes()
    mem.write_u64(mem.size - 8, 1)
    assert mem.resident_pages() == 1
    assert vballoon.rss_bytes() - before < 16 * MiB


def test_parse_size():
    assert vballoon.parse_size("8GiB") == 8 << 30
    assert vballoon.parse_size(4096) == 4096
    with pytest.raises(ConfigError):
        vballoon.parse_size(-1)


def test_memfd_fd_survives_gc_of_original():
    mem = GuestMemory("2MiB", backing="memfd")
    fd = os.dup(mem.memfd)
    mem.write(0, b"x")
    del mem
    other = GuestMemory.from_memfd(fd, "2MiB")
    os.close(fd)
    assert other.read(0, 1) == b"x"
