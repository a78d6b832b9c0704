"""Page sets and encodings from Python: round trips, numpy views, hostile messages."""

import struct

import numpy as np
import pytest
from hypothesis import given, strategies as st

from vballoon import ConfigError, EncodingError, PageSet, decode_pages, encode_pages

ENCODINGS = ["pfn", "bitmap", "extents", "auto"]
PIECE = 32 * 1024 * 8  # pages one 32 KiB bitmap piece covers
WINDOW = 32 * PIECE  # pages one 32 GiB bitmap window covers


def _boundary_runs(npages):
    """Runs biased toward 64-page words, 32 KiB pieces, 32 GiB windows and the end of RAM."""
    anchors = [0, 63, 64, PIECE - 1, PIECE, WINDOW - 3, WINDOW, npages - 1]
    start = st.one_of(
        st.sampled_from([a for a in anchors if a < npages]), st.integers(0, npages - 1)
    )
    return st.lists(st.tuples(start, st.integers(1, 300)), max_size=12)


@pytest.mark.parametrize("encoding", ENCODINGS)
@given(data=st.data())
def test_every_encoding_round_trips(encoding, data):
    npages = data.draw(st.sampled_from([1, 4096, WINDOW + PIECE, 4 * WINDOW]))
    runs = [(s, min(n, npages - s)) for s, n in data.draw(_boundary_runs(npages))]
    pages = PageSet(npages, runs)
    merged = PageSet(npages)
    for message in encode_pages(encoding, pages):
        got = decode_pages(encoding, message, npages)
        assert set(got.runs()) <= set(_split(pages, got))
        for start, length in got.runs():
            merged.add(start, length)
    assert merged == pages


def _split(pages, part):
    """Every run of `part` lies inside `pages` (a helper for the subset check above)."""
    out = []
    for start, length in part.runs():
        assert all(p in pages for p in (start, start + length - 1))
        out.append((start, length))
    return out


def test_empty_and_single_and_last_page():
    for encoding in ENCODINGS:
        assert encode_pages(encoding, PageSet(1000)) in ([], [[b"\0" * 32]]) or all(
            decode_pages(encoding, m, 1000).count() == 0
            for m in encode_pages(encoding, PageSet(1000))
        )
        for pfn in (0, 999):
            msgs = encode_pages(encoding, PageSet(1000, [(pfn, 1)]))
            got = PageSet(1000)
            for m in msgs:
                for s, n in decode_pages(encoding, m, 1000).runs():
                    got.add(s, n)
            assert got.runs() == [(pfn, 1)]


def test_bitmap_message_is_the_v3_layout():
    (message,) = encode_pages("bitmap", PageSet(1 << 20, [(70, 2)]))
    header, *pieces = message
    cmd, shift, flag, reserved, req_id, start_pfn, bmap_len = struct.unpack("<4H3Q", header)
    assert (cmd, shift, flag, reserved, req_id) == (0, 12, 0, 0, 0)
    assert start_pfn == 64 and bmap_len == sum(map(len, pieces)) == 8
    assert pieces[0][0] == 0b1100_0000


def test_numpy_view_is_the_set():
    pages = PageSet(256, [(1, 2)])
    words = np.frombuffer(pages, dtype=np.uint64)
    assert words.shape == (4,) and int(words[0]) == 0b110
    words[3] = 1 << 63
    assert 255 in pages and pages.count() == 3


@pytest.mark.parametrize(
    ("encoding", "segments", "match"),
    [
        ("pfn", [b"\1\0\0"], "multiple of 4"),
        ("pfn", [struct.pack("<I", 5000)], "outside"),
        ("bitmap", [b"\0" * 31], "header"),
        ("bitmap", [struct.pack("<4H3Q", 0, 13, 0, 0, 0, 0, 8), b"\xff" * 8], "page_shift"),
        ("bitmap", [struct.pack("<4H3Q", 0, 12, 0, 0, 0, 0, 16), b"\xff" * 8], "bmap_len"),
        ("extents", [struct.pack("<QQ", 7 << 12, 0)], "zero"),
        ("extents", [struct.pack("<Q", 7 << 12)], "no length"),
        ("extents", [struct.pack("<Q", (4095 << 12) | 4)], "outside"),
    ],
)
def test_hostile_messages_raise_encoding_error(encoding, segments, match):
    with pytest.raises(EncodingError, match=match):
        decode_pages(encoding, segments, 4096)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="encoding"):
        encode_pages("morse", PageSet(8))
    with pytest.raises(ConfigError, match="outside"):
        PageSet(8).add(7, 2)
