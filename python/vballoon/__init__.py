"""vballoon: virtio-balloon fast (de)inflation and free-page-hinted live migration.

A Rust core (guest memory, split virtqueues, page-set encodings, the balloon device and driver,
a pre-copy migration engine) with a thin Python API for scripting guest/host scenarios.
"""

from vballoon import _native
from vballoon._native import *  # noqa: F403  (the native API is the public API)

__all__ = list(_native.__all__)

# The vhost-user balloon with Firecracker's API (a Python layer over _native.VhostUserBackend).
from vballoon.balloon import VhostUserBalloon

__all__ += ["VhostUserBalloon"]
