"""The names vballoon's enum-like parameters take, as `Literal` aliases (one definition each).

Each alias lists the canonical names; the native layer also accepts a few historical spellings
(`"anon"`, `"per_page"`, ...) and raises `ConfigError` (a `ValueError`) for anything else.
`CHOICES` gives the same names at run time (for argparse `choices=` and for tests).
"""

from __future__ import annotations

from typing import Literal, Union, get_args

Backing = Literal["anonymous", "memfd", "thp", "hugetlb"]
"""How guest RAM is backed on the host: private anonymous memory, a memfd, transparent huge
pages, or hugetlbfs pages."""

Encoding = Literal["pfn", "bitmap", "extents", "auto"]
"""How an inflate or deflate message lists its pages on the wire."""

DiscardPolicy = Literal["coalesced", "per-page", "never", "vectored", "parallel"]
"""How the device gives inflated pages back: one call per run, per page, not at all, batched
`process_madvise`, or runs spread over threads."""

RunMode = Literal["sync", "threaded"]
"""Whether driver and device take turns on one thread or run on their own threads."""

AbiMode = Literal["vballoon", "v3"]
"""Which wire ABI the balloon speaks: today's (`"vballoon"`), or the 2016 v3 patch set's."""

NotifyMode = Literal["polling", "eventfd"]
"""How a virtqueue pair's ends notify each other."""

HintMode = Literal["off", "bitmap", "upstream", "reporting"]
"""Where a migration learns which pages are free: nowhere, the seed's bitmap over the misc
queue, upstream free page hinting, or free page reporting."""

DirtyTracking = Literal["explicit", "kernel", "auto"]
"""How a migration finds pages written meanwhile: the guest model's log, the kernel's
userfaultfd write-protect, or the kernel's when it is available."""

Link = Literal["socketpair", "tcp"]
"""The link an in-process migration uses."""

Scenario = Literal["m1", "m2", "m3"]
"""A published migration scenario: idle guest, after a memory-heavy workload, under load."""

MigrateVariant = Literal[
    "off", "skip", "bitmap", "upstream", "reporting",
    "bitmap+skip", "upstream+skip", "reporting+skip",
]  # fmt: skip
"""A migration bench variant: a hint mode, and whether unpopulated pages are skipped."""

Feature = Literal[
    "must_tell_host", "stats_vq", "deflate_on_oom", "free_page_hint", "page_poison",
    "reporting", "bitmap", "misc_vq", "extents", "auto",
]  # fmt: skip
"""A balloon feature a vhost-user backend can offer, by name."""

Size = Union[int, str]
"""Bytes: an int, or a string with a binary unit such as `"8GiB"` or `"512 MiB"`."""

Rate = Union[int, str]
"""Bytes per second: an int, or a string such as `"10Gbit"` or `"1.25GB/s"`."""

Duration = Union[float, str]
"""Seconds: a number, or a string such as `"300ms"` or `"2s"`."""

CHOICES: dict[str, tuple[str, ...]] = {
    "backing": get_args(Backing),
    "encoding": get_args(Encoding),
    "discard": get_args(DiscardPolicy),
    "mode": get_args(RunMode),
    "abi": get_args(AbiMode),
    "notify": get_args(NotifyMode),
    "hints": get_args(HintMode),
    "dirty_tracking": get_args(DirtyTracking),
    "link": get_args(Link),
    "scenario": get_args(Scenario),
    "variant": get_args(MigrateVariant),
    "feature": get_args(Feature),
}
"""Each alias's names, by the parameter name that takes them."""

__all__ = [
    "CHOICES",
    "AbiMode",
    "Backing",
    "DirtyTracking",
    "DiscardPolicy",
    "Duration",
    "Encoding",
    "Feature",
    "HintMode",
    "Link",
    "MigrateVariant",
    "NotifyMode",
    "Rate",
    "RunMode",
    "Scenario",
    "Size",
]
