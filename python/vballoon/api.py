"""Firecracker's balloon API as HTTP on a Unix socket, served by Python's `http.server`.

Paths, fields and semantics follow Firecracker's: `PUT|GET|PATCH /balloon`,
`GET|PATCH /balloon/statistics`, `PATCH /balloon/hinting/start`, `GET /balloon/hinting/status`,
`PATCH /balloon/hinting/stop`; success is 204 (or 200 with a JSON body), errors are JSON
`{"fault_message": ...}`: 400 for a bad request, 404 for an unknown path, 405 for a method a
path does not take.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable

from vballoon.balloon import BalloonApiError

if TYPE_CHECKING:
    from vballoon.balloon import VhostUserBalloon

MAX_BODY = 64 * 1024  # a balloon request is a few dozen bytes; refuse to buffer more

# field name -> (type, required) for each request body.
BOOL, INT = bool, int
PUT_BALLOON = {
    "amount_mib": (INT, True),
    "deflate_on_oom": (BOOL, True),
    "stats_polling_interval_s": (INT, False),
    "free_page_hinting": (BOOL, False),
    "free_page_reporting": (BOOL, False),
}
PATCH_BALLOON = {"amount_mib": (INT, True)}
PATCH_STATS = {"stats_polling_interval_s": (INT, True)}
HINT_START = {"acknowledge_on_stop": (BOOL, False)}


def parse_body(raw: bytes, fields: Mapping[str, tuple[type, bool]], *, empty_ok: bool) -> dict:
    """A JSON object with exactly the known `fields`, each of its type; BalloonApiError else."""
    if not raw.strip():
        if empty_ok:
            return {}
        raise BalloonApiError("the request needs a JSON body")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BalloonApiError(f"the body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise BalloonApiError(f"the body must be a JSON object, not {type(body).__name__}")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BalloonApiError(f"unknown field(s) {unknown}; this request takes {sorted(fields)}")
    for name, (kind, required) in fields.items():
        if name not in body:
            if required:
                raise BalloonApiError(f"missing field {name!r}")
            continue
        value = body[name]
        # JSON true is a Python int too: keep integers and booleans apart.
        ok = (
            isinstance(value, bool)
            if kind is bool
            else (isinstance(value, int) and not isinstance(value, bool))
        )
        if not ok:
            raise BalloonApiError(f"field {name!r} must be {kind.__name__}, not {value!r}")
        if kind is int and value < 0:
            raise BalloonApiError(f"field {name!r} must not be negative, not {value}")
    return body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as curl and Firecracker's clients expect
    server: _UnixHTTPServer
    server_version = "vballoon"

    # Unix-socket peers have no (host, port): name them for http.server's logging.
    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log is not None:
            self.server.log(f"{self.command} {self.path}: " + format % args)

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if data and self.command != "HEAD":  # a HEAD answer carries headers only
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (a bad request line, a method no path takes) as JSON too;
        # a method it has no handler for is a 405 here, as for any path's unknown method.
        if code == HTTPStatus.NOT_IMPLEMENTED:
            code = HTTPStatus.METHOD_NOT_ALLOWED
        self.close_connection = True
        self._fault(code, message or HTTPStatus(code).phrase)

    def _fault(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"fault_message": message}, headers)

    def _body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                self._fault(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
                return None
            return b""
        try:
            n = int(length)
        except ValueError:
            n = -1
        if n < 0 or n > MAX_BODY:
            self.close_connection = True
            self._fault(
                HTTPStatus.BAD_REQUEST, f"Content-Length {length!r} is outside 0..{MAX_BODY}"
            )
            return None
        return self.rfile.read(n)

    def _dispatch(self) -> None:
        body = self._body()
        if body is None:
            return
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        routes = ROUTES.get(path)
        if routes is None:
            self._fault(HTTPStatus.NOT_FOUND, f"no such resource: {path}")
            return
        action = routes.get(self.command)
        if action is None:
            allow = ", ".join(sorted(routes))
            self._fault(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{self.command} is not allowed on {path} (allowed: {allow})",
                {"Allow": allow},
            )
            return
        try:
            result = action(self.server.balloon, body)
        except BalloonApiError as e:
            self._fault(e.status, str(e))
            return
        except Exception as e:  # a backend error: report it, keep serving
            self._fault(HTTPStatus.BAD_REQUEST, f"{type(e).__name__}: {e}")
            return
        if result is None:
            self._send(HTTPStatus.NO_CONTENT)
        else:
            self._send(HTTPStatus.OK, result)

    do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = do_HEAD = do_OPTIONS = _dispatch


def _put_balloon(b: VhostUserBalloon, raw: bytes) -> None:
    body = parse_body(raw, PUT_BALLOON, empty_ok=False)
    b.configure(
        body["amount_mib"],
        body["deflate_on_oom"],
        body.get("stats_polling_interval_s", 0),
        body.get("free_page_hinting"),
        body.get("free_page_reporting"),
    )


def _no_body(raw: bytes) -> None:
    if raw.strip():
        raise BalloonApiError("this request takes no body")


def _get_balloon(b: VhostUserBalloon, raw: bytes) -> dict:
    _no_body(raw)
    return b.config().to_dict()


def _patch_balloon(b: VhostUserBalloon, raw: bytes) -> None:
    b.set_amount_mib(parse_body(raw, PATCH_BALLOON, empty_ok=False)["amount_mib"])


def _get_stats(b: VhostUserBalloon, raw: bytes) -> dict:
    _no_body(raw)
    return b.statistics().to_dict()


def _patch_stats(b: VhostUserBalloon, raw: bytes) -> None:
    b.set_stats_interval(parse_body(raw, PATCH_STATS, empty_ok=False)["stats_polling_interval_s"])


def _hint_start(b: VhostUserBalloon, raw: bytes) -> None:
    body = parse_body(raw, HINT_START, empty_ok=True)
    b.start_hinting(body.get("acknowledge_on_stop", True))


def _hint_status(b: VhostUserBalloon, raw: bytes) -> dict:
    _no_body(raw)
    return b.hinting_status().to_dict()


def _hint_stop(b: VhostUserBalloon, raw: bytes) -> None:
    parse_body(raw, {}, empty_ok=True)
    b.stop_hinting()


ROUTES: dict[str, dict[str, Callable[[VhostUserBalloon, bytes], Any]]] = {
    "/balloon": {"PUT": _put_balloon, "GET": _get_balloon, "PATCH": _patch_balloon},
    "/balloon/statistics": {"GET": _get_stats, "PATCH": _patch_stats},
    "/balloon/hinting/start": {"PATCH": _hint_start},
    "/balloon/hinting/status": {"GET": _hint_status},
    "/balloon/hinting/stop": {"PATCH": _hint_stop},
}


class _UnixHTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_UNIX
    daemon_threads = True

    def __init__(self, path: str, balloon: VhostUserBalloon, log: Callable[[str], None] | None):
        self.balloon = balloon
        self.log = log
        super().__init__(path, _Handler)  # type: ignore[arg-type]

    def server_bind(self) -> None:
        # HTTPServer.server_bind wants (host, port); a Unix socket has a path.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "localhost"
        self.server_port = 0


class ApiServer:
    """The API on a Unix socket at `path` (a stale socket file there is replaced)."""

    def __init__(
        self, path: str, balloon: VhostUserBalloon, log: Callable[[str], None] | None = None
    ) -> None:
        self.path = path
        _remove_stale_socket(path)
        self._server = _UnixHTTPServer(path, balloon, log)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="vballoon-api", daemon=True
        )

    def start(self) -> None:
        """Starts serving on a daemon thread."""
        self._thread.start()

    def close(self) -> None:
        """Stops serving, joins the thread and removes the socket file."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket; not replacing it", path)
    os.unlink(path)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (for tests, the demo and scripts)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        """Connects to the Unix socket (http.client calls this)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def request(
    path: str, method: str, url: str, body: Any = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """One API call on the socket at `path`: (status, decoded JSON body or None)."""
    conn = UnixHTTPConnection(path, timeout)
    try:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body))
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, url, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None)
    finally:
        conn.close()
