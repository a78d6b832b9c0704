"""Shared pieces of the migration tests: a free loopback port, a `vballoon migrate listen`
process, and migrating a guest to it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import vballoon


def free_port() -> int:
    """A loopback TCP port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 30.0) -> None:
    """Waits until a socket listens on loopback `port` (read from /proc/net/tcp: connecting
    to find out would use up the listener's one accept)."""
    want = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as f:
            if any(line.split()[1:4:2] == [want, "0A"] for line in f.readlines()[1:]):
                return
        time.sleep(0.01)
    raise TimeoutError(f"nobody listens on port {port}")


def cli_listener(port: int, size: str, *extra: str) -> subprocess.Popen[str]:
    """`vballoon migrate listen` on `port` for a `size` guest, its output piped."""
    cmd = [sys.executable, "-m", "vballoon.cli", "migrate", "listen",
           "--address", f"127.0.0.1:{port}", "--size", size, "--timeout", "60", *extra]  # fmt: skip
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def migrate_to_cli(
    guest: vballoon.Guest, size: str, *extra: str, **migrate: Any
) -> tuple[vballoon.MigrationResult, dict[str, Any]]:
    """Migrates `guest` to a fresh CLI listener (`extra`: its options); returns the source's
    result and the listener's one-line JSON report. Fails unless the listener exits 0."""
    port = free_port()
    listener = cli_listener(port, size, *extra)
    try:
        assert listener.stdout is not None and "listening" in listener.stdout.readline()
        wait_listening(port)  # it says so just before it binds
        result = guest.migrate(to=f"127.0.0.1:{port}", **migrate)
        out, err = listener.communicate(timeout=60)
    finally:
        listener.kill()
    assert listener.returncode == 0, err
    return result, json.loads(out.strip().splitlines()[-1])
