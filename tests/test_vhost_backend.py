"""The vhost-user backend's Python binding: construction, arguments, status, lifecycle.

Protocol behaviour is tested in Rust (tests/vhost_user.rs) with a real vhost-user frontend; the
real-guest tests drive it with User-Mode Linux.
"""

import os
import socket

import pytest

from vballoon._native import ConfigError, VhostStatus, VhostUserBackend


def test_binds_serves_and_unlinks(tmp_path):
    path = tmp_path / "vu.sock"
    with VhostUserBackend(str(path)) as b:
        assert path.exists()
        st = b.status()
        assert isinstance(st, VhostStatus)
        assert not st.connected and not st.driver_ok
        assert st.negotiated_features == []
        b.set_target(1234)
        assert b.status().target_pages == 1234
        assert b.request_stats() is False
        assert b.stats().to_dict() == {} and b.stats().free_memory is None
        d = st.to_dict()
        assert d["frontends_served"] == 0 and "ram_backed_bytes" in d
        # A frontend that connects and leaves is counted and the backend waits for the next.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        assert b.wait_for(connected=True, timeout=10)
        s.close()
        assert b.wait_for(connected=False, timeout=10)
        assert b.status().frontends_served == 1
    assert not path.exists()
    b.close()  # idempotent


def test_replaces_a_stale_socket_but_not_a_file(tmp_path):
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    with VhostUserBackend(str(stale)):
        pass
    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(ConfigError):
        VhostUserBackend(str(regular))
    assert regular.read_text() == "keep me"
    with pytest.raises(OSError):
        VhostUserBackend(str(tmp_path / "no" / "such" / "dir.sock"))


def test_bad_arguments(tmp_path):
    path = str(tmp_path / "vu.sock")
    with pytest.raises(ConfigError):
        VhostUserBackend(path, features=["warp_drive"])
    with pytest.raises(ConfigError):
        VhostUserBackend(path, features=["bitmap", "extents"])
    with pytest.raises(ConfigError):
        VhostUserBackend(path, queue_size=100)
    with VhostUserBackend(path, features=["must_tell_host"]) as b:
        with pytest.raises(ConfigError):
            b.set_target(-1)
        with pytest.raises(ConfigError):
            b.set_target(1 << 32)
        with pytest.raises(ConfigError):
            b.wait_for(timeout=float("nan"))
        # Hinting needs a bound driver.
        with pytest.raises(Exception, match="no frontend"):
            b.start_hinting()
        b.set_features(["must_tell_host", "stats_vq", "bitmap"])
    with pytest.raises(ConfigError):
        b.set_target(1)
    assert not os.path.exists(path)
