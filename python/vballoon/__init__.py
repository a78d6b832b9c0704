"""vballoon: virtio-balloon fast (de)inflation and free-page-hinted live migration.

A Rust core (guest memory, split virtqueues, page-set encodings, the balloon device and driver,
a pre-copy migration engine) with a thin Python API for scripting guest/host scenarios.
"""

from vballoon._native import (
    ConfigError,
    GuestMemory,
    GuestMemoryError,
    GuestView,
    VBalloonError,
    __version__,
    parse_size,
    peak_rss_bytes,
    rss_bytes,
)

__all__ = [
    "ConfigError",
    "GuestMemory",
    "GuestMemoryError",
    "GuestView",
    "VBalloonError",
    "__version__",
    "parse_size",
    "peak_rss_bytes",
    "rss_bytes",
]
