"""`vballoon serve` as a process: the API answers, SIGTERM stops it and removes its sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from vballoon import _native
from vballoon.api import request

pytestmark = pytest.mark.skipif(
    not hasattr(_native, "VhostUserBackend"), reason="built without the vhost-user backend"
)


def test_serve_answers_the_api_and_stops_cleanly(tmp_path):
    vu, api = tmp_path / "vu.sock", tmp_path / "api.sock"
    cmd = [sys.executable, "-m", "vballoon.cli", "serve", "--socket", str(vu)]
    proc = subprocess.Popen(
        [*cmd, "--api-socket", str(api), "--amount-mib", "16", "--deflate-on-oom"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not api.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the API socket never appeared"
            time.sleep(0.05)
        assert vu.exists()
        status, body = request(str(api), "GET", "/balloon")
        assert status == 200
        assert (body["amount_mib"], body["deflate_on_oom"]) == (16, True)
        assert request(str(api), "PATCH", "/balloon", {"amount_mib": 32})[0] == 204
        assert request(str(api), "GET", "/balloon")[1]["amount_mib"] == 32
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    assert rc == 0, err
    assert "deflate_on_oom" in err  # the startup line names the offer
    assert "stopped" in err
    assert not vu.exists() and not api.exists()


def test_serve_refuses_a_bad_amount(tmp_path):
    cmd = [sys.executable, "-m", "vballoon.cli", "serve", "--socket", str(tmp_path / "vu.sock")]
    r = subprocess.run(
        [*cmd, "--amount-mib", "-3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "amount_mib -3" in r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "vu.sock")
