"""Firecracker's balloon API over HTTP on a Unix socket, against the real vhost-user backend
with no guest connected (the real-guest tests drive it with a Linux guest)."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading

import pytest

from vballoon import _native
from vballoon.api import UnixHTTPConnection, request
from vballoon.balloon import MIB_PAGES, VhostUserBalloon

pytestmark = pytest.mark.skipif(
    not hasattr(_native, "VhostUserBackend"), reason="built without the vhost-user backend"
)


@pytest.fixture
def balloon(tmp_path):
    with VhostUserBalloon(tmp_path / "vu.sock", tmp_path / "api.sock") as b:
        yield b


def api(b: VhostUserBalloon, method: str, url: str, body=None):
    assert b.api is not None
    return request(b.api.path, method, url, body)


def test_put_then_get_and_the_offer_follows(balloon):
    body = {"amount_mib": 256, "deflate_on_oom": True, "stats_polling_interval_s": 1}
    assert api(balloon, "PUT", "/balloon", body) == (204, None)
    status, got = api(balloon, "GET", "/balloon")
    assert status == 200
    assert {k: got[k] for k in body} == body
    assert balloon.status().target_pages == 256 * MIB_PAGES
    offered = balloon.features()
    assert "deflate_on_oom" in offered and "stats_vq" in offered
    body = {"amount_mib": 0, "deflate_on_oom": False, "free_page_hinting": False}
    assert api(balloon, "PUT", "/balloon", body)[0] == 204
    offered = balloon.features()
    assert "deflate_on_oom" not in offered
    assert "stats_vq" not in offered  # omitted interval means 0: statistics off
    assert "free_page_hint" not in offered
    assert api(balloon, "GET", "/balloon")[1]["stats_polling_interval_s"] == 0


def test_patch_balloon_sets_the_target_in_config_space(balloon):
    assert api(balloon, "PATCH", "/balloon", {"amount_mib": 300})[0] == 204
    assert balloon.status().target_pages == 300 * MIB_PAGES
    assert api(balloon, "GET", "/balloon")[1]["amount_mib"] == 300
    assert api(balloon, "PATCH", "/balloon", {"amount_mib": 0})[0] == 204
    assert balloon.status().target_pages == 0


def test_statistics_disabled_then_enabled(balloon):
    status, body = api(balloon, "GET", "/balloon/statistics")
    assert status == 400 and "not enabled" in body["fault_message"]
    assert api(balloon, "PATCH", "/balloon/statistics", {"stats_polling_interval_s": 2})[0] == 204
    assert "stats_vq" in balloon.features()
    api(balloon, "PATCH", "/balloon", {"amount_mib": 5})
    status, body = api(balloon, "GET", "/balloon/statistics")
    assert status == 200
    assert (body["target_pages"], body["target_mib"]) == (5 * MIB_PAGES, 5)
    assert (body["actual_pages"], body["actual_mib"]) == (0, 0)
    for ours in ("ram_backed_bytes", "pages_discarded", "pages_reported", "pages_hinted"):
        assert body[ours] == 0
    # Interval 0 disables statistics again (no guest has negotiated, so the offer may change).
    assert api(balloon, "PATCH", "/balloon/statistics", {"stats_polling_interval_s": 0})[0] == 204
    assert "stats_vq" not in balloon.features()


def test_hinting_needs_a_guest_that_negotiated_it(balloon):
    for method, url in (
        ("PATCH", "/balloon/hinting/start"),
        ("GET", "/balloon/hinting/status"),
        ("PATCH", "/balloon/hinting/stop"),
    ):
        status, body = api(balloon, method, url)
        assert status == 400, url
        assert "not negotiated" in body["fault_message"]


@pytest.mark.parametrize(
    ("method", "url", "body", "code", "words"),
    [
        ("GET", "/nothing", None, 404, "no such resource"),
        ("GET", "/balloon/statistics/extra", None, 404, "no such resource"),
        ("DELETE", "/balloon", None, 405, "not allowed"),
        ("POST", "/balloon/statistics", None, 405, "not allowed"),
        ("GET", "/balloon/hinting/start", None, 405, "not allowed"),
        ("PUT", "/balloon", b'{"amount_mib": 1', 400, "not valid JSON"),
        ("PUT", "/balloon", b"[1, 2]", 400, "JSON object"),
        ("PUT", "/balloon", b"", 400, "needs a JSON body"),
        ("PUT", "/balloon", {"amount_mib": 1}, 400, "missing field 'deflate_on_oom'"),
        ("PUT", "/balloon", {"amount_mib": 1, "deflate_on_oom": 0}, 400, "must be bool"),
        ("PUT", "/balloon", {"amount_mib": -1, "deflate_on_oom": False}, 400, "negative"),
        ("PATCH", "/balloon", {"amount_mib": "256"}, 400, "must be int"),
        ("PATCH", "/balloon", {"amount_mib": True}, 400, "must be int"),
        ("PATCH", "/balloon", {"amount_mib": 1.5}, 400, "must be int"),
        ("PATCH", "/balloon", {"amount_mib": 1 << 40}, 400, "outside"),
        ("PATCH", "/balloon", {"amount_mib": 1, "deflate_on_oom": True}, 400, "unknown field"),
        ("PATCH", "/balloon/statistics", {"stats_polling_interval_s": -1}, 400, "negative"),
        ("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 70000}, 400, "outside"),
        ("PATCH", "/balloon/hinting/start", {"acknowledge_on_stop": 1}, 400, "must be bool"),
        ("GET", "/balloon", {"amount_mib": 1}, 400, "takes no body"),
    ],
)
def test_bad_requests_are_json_faults(balloon, method, url, body, code, words):
    before = (balloon.config(), balloon.status().target_pages)
    status, reply = api(balloon, method, url, body)
    assert status == code
    assert set(reply) == {"fault_message"}
    assert words in reply["fault_message"]
    assert (balloon.config(), balloon.status().target_pages) == before  # nothing changed


def test_malformed_http_and_oversized_bodies_get_json_faults(balloon):
    def raw(data: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(balloon.api.path)
            s.sendall(data)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    reply = raw(b"FROB /balloon HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 405")
    assert b'"fault_message"' in reply
    reply = raw(b"NOT A REQUEST HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")
    assert b'"fault_message"' in reply
    # A Content-Length past the limit is refused before any body is read.
    reply = raw(b"PUT /balloon HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n{}")
    assert reply.startswith(b"HTTP/1.1 400") and b"Content-Length" in reply


def test_keep_alive_and_concurrent_clients(balloon):
    conn = UnixHTTPConnection(balloon.api.path)
    try:
        for amount in (1, 2, 3):
            conn.request("PATCH", "/balloon", body=json.dumps({"amount_mib": amount}))
            resp = conn.getresponse()
            assert resp.status == 204 and resp.read() == b""
        conn.request("GET", "/balloon")
        resp = conn.getresponse()
        assert json.loads(resp.read())["amount_mib"] == 3
    finally:
        conn.close()
    results: list[int] = []

    def client(n: int) -> None:
        for _ in range(20):
            results.append(api(balloon, "PATCH", "/balloon", {"amount_mib": n})[0])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [204] * 80
    assert balloon.status().target_pages in {n * MIB_PAGES for n in range(4)}


def test_sockets_replaced_when_stale_and_removed_on_close(tmp_path):
    api_path = tmp_path / "api.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(api_path))
    stale.close()  # a socket file nobody listens on, as a killed server leaves
    b = VhostUserBalloon(tmp_path / "vu.sock", api_path)
    assert stat.S_ISSOCK(os.lstat(api_path).st_mode)
    assert api(b, "GET", "/balloon")[0] == 200
    b.close()
    b.close()  # idempotent
    assert not api_path.exists()
    assert not (tmp_path / "vu.sock").exists()


def test_a_regular_file_at_the_api_path_is_not_replaced(tmp_path):
    api_path = tmp_path / "api.sock"
    api_path.write_text("precious")
    with pytest.raises(FileExistsError):
        VhostUserBalloon(tmp_path / "vu.sock", api_path)
    assert api_path.read_text() == "precious"
    assert not (tmp_path / "vu.sock").exists()  # the backend was closed again


def test_python_api_validates_like_http(tmp_path):
    from vballoon.balloon import BalloonApiError

    with pytest.raises(BalloonApiError):
        VhostUserBalloon(tmp_path / "vu.sock", amount_mib=-5)
    with VhostUserBalloon(tmp_path / "vu.sock") as b:
        assert b.api is None
        with pytest.raises(BalloonApiError, match="integer"):
            b.set_amount_mib("7")  # type: ignore[arg-type]
        with pytest.raises(BalloonApiError, match="outside"):
            b.set_stats_interval(1 << 20)
        b.set_amount_mib(7)
        assert b.status().target_pages == 7 * MIB_PAGES
