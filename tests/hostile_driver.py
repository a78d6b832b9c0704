"""Drives every public callable of `vballoon` with hostile arguments (run in a subprocess).

`tests/test_hostile_callers.py` runs this file as a child process, so an abort or a signal
kills the child, not pytest. Each call is logged to the file named by argv[1] before it is
made, so the parent can name the call that killed the child. The process exits 0 when every
call returned or raised a typed exception, 1 (with the offending call on stderr) otherwise.

`COVERAGE` names every public callable; `uncovered()` lists public names it does not cover,
so a new API fails the parent's coverage test until it is added here.
"""

from __future__ import annotations

import inspect
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

from hostile_receivers import Receivers
from hypothesis import HealthCheck, given, settings, strategies as st

import vballoon
from vballoon.types import CHOICES

# What a caller may see: typed exceptions only (never PanicException, never a signal).
ALLOWED = (ValueError, TypeError, TimeoutError, OverflowError, vballoon.VBalloonError)

# Constructors that bind a Unix socket: for a well-formed path, an OSError carrying an errno is
# the host's answer to bind(2) (no such directory, no permission, read-only file system, an
# existing non-socket file for the API), as from open(); a malformed path must be a ValueError.
SOCKET_BINDERS = {"VhostUserBackend.__new__", "VhostUserBalloon.__new__"}

# Hostile values. Every *valid* value here is cheap (small sizes, short timeouts), so a call
# that accepts one does little work; invalid ones are as hostile as possible.
INTS = st.sampled_from(
    [
        *[0, 1, 2, 3, 7, 16, 255, 4095, 4096, 65535, 65536, -1, -(2**31), -(2**63) - 1, 2**16],
        *[2**32 + 1, 2**40 + 4096, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**200],
    ]
)
FLOATS = st.sampled_from(
    [
        *[0.0, -0.0, 0.01, 0.5, 1.0, -1.0, -1e-9, math.nan, math.inf, -math.inf, 1e300],
        *[604801.0, 5e-324, 2.0**64, -(2.0**63)],
    ]
)
SIZES = st.sampled_from(
    [
        *[4096, "4KiB", "1MiB", "16MiB", "", " ", "x", "-1", "-1MiB", "nan", "inf", "1e400"],
        *["16EiB", "99999999999999999999999GiB", "1.5", "0.5KiB", "8 potatoes", "\x00"],
        *["\udcff", "4096.0001", "1TiB1", "2TiB", "1_000_000_000_000_000"],
    ]
)
WRONG = st.sampled_from(
    [
        *[None, object(), [], {}, (), b"", b"\xff" * 9, bytearray(3), 1j, True, "x", [(1, 2)]],
        *[[(-1, 1)], [(2**64, 1)], [(0, 2**33)], [(1, 2, 3)], [b"\x00" * 64], [[b"x"]]],
    ]
)
HOSTILE = st.one_of(INTS, FLOATS, SIZES, WRONG)
# Timeouts and durations: valid ones short, so no call blocks for long.
TIMEOUT = st.one_of(
    st.sampled_from([0.0, 0.01, 0.05]),
    st.sampled_from([-1.0, -0.0001, math.nan, math.inf, -math.inf, 1e300, 604801.0, 2**64]),
    st.sampled_from(["1s", "300ms", "-1s", "nanms", None, object()]),
)
# Counts of work: valid ones small.
WORK = st.one_of(st.sampled_from([0, 1, 2]), st.sampled_from([-1, 2**64, 1.5, "3", None]))
# Rates: valid ones fast (or unlimited), so a migration finishes quickly.
RATE = st.one_of(
    st.sampled_from([None, "10Gbit", 0]),
    st.sampled_from(["", "x", "-1Gbit", "nanGbit", "infGbit", "1e400", -1, 2**64, 1.5, object()]),
)
SMALL_SIZE = st.one_of(
    st.sampled_from(["4MiB", "8MiB"]),
    st.sampled_from([0, 4095, -1, "1e400", "nan", "2TiB", 2**64, object(), "16EiB"]),
)
# Socket paths: valid ones relative, so they land in the driver's own temporary directory (the
# current directory while it runs); hostile ones malformed, unreachable or not a path at all.
SOCKET = st.one_of(
    st.sampled_from(["vu-a.sock", "sub/vu-b.sock", "\udcff.sock"]),
    st.sampled_from(["", "\x00", "a\x00b", "a" * 108, "/" + "a" * 200, ".", "/", "sub"]),
    st.sampled_from(["/no/such/dir/x.sock", "/proc/vballoon.sock", b"vu-c.sock", 3, None, [1]]),
)
FEATURES = st.one_of(
    st.sampled_from([[], ["stats_vq"], ["must_tell_host", "page_poison", "reporting"]]),
    st.sampled_from([["warp_drive"], [""], ["\x00"], ["\udcff"], ["STATS_VQ"], ["a" * 9999]]),
    st.sampled_from([["stats_vq"] * 1000, [1], [None], "stats_vq", b"stats_vq", {"x": 1}]),
)
BACKINGS = st.one_of(
    st.sampled_from([["thp"], ["anonymous"], ["memfd"], ["hugetlb"], []]),
    st.sampled_from([["x"], "thp", [None], ["thp"] * 3, ["HUGETLB"]]),
)
# Never True: a valid bench_huge_table call must not raise the host's nr_hugepages.
NO_RESERVE = st.one_of(st.just(False), st.sampled_from([None, 0, 1, "yes", object()]))
ADDRESS = st.one_of(
    st.sampled_from(["127.0.0.1:0"]),
    st.sampled_from(["", "x", "127.0.0.1", "127.0.0.1:99999", "[::1", ":", "\x00", "a" * 300]),
)

# Per callable, per parameter: strategies where the default HOSTILE could ask for real work.
OVERRIDES_BY_CALL: dict[str, dict[str, Any]] = {
    "pump_queue": {"buffers": WORK},
    "bench_inflate_table": {"guest": SMALL_SIZE, "rounds": WORK},
    "bench_migrate_rows": {
        "guest": SMALL_SIZE,
        "repetitions": WORK,
        "bandwidth": RATE,
        "dirty_rate": RATE,
        "scenarios": st.one_of(st.just(["m1"]), HOSTILE),
    },
    "bench_huge_table": {
        "guest": SMALL_SIZE,
        "inflate": SMALL_SIZE,
        "rounds": WORK,
        "backings": BACKINGS,
        "reserve": NO_RESERVE,
    },
    "listen_migration": {"address": ADDRESS},
    "Guest.migrate": {
        "bandwidth": RATE,
        "dirty_rate": RATE,
        "max_rounds": WORK,
        "to": st.one_of(st.none(), ADDRESS),
    },
    "Guest.__new__": {"size": SMALL_SIZE, "used": SMALL_SIZE},
    "Session.__new__": {"guest_size": SMALL_SIZE},
    "GuestMemory.__new__": {"backing": st.one_of(st.sampled_from(CHOICES["backing"]), HOSTILE)},
    "VhostUserBackend.__new__": {"socket": SOCKET, "features": st.one_of(st.none(), FEATURES)},
    "VhostUserBackend.set_features": {"features": FEATURES},
    "VhostUserBalloon.__new__": {"socket": SOCKET, "api_socket": st.one_of(st.none(), SOCKET)},
}
OVERRIDES = {(c, p): s for c, params in OVERRIDES_BY_CALL.items() for p, s in params.items()}
TIMEOUT_NAMES = {"timeout", "downtime"}
# Waits whose default (None) means "forever": always given a timeout, never None.
FINITE_TIMEOUT = TIMEOUT.filter(lambda t: t is not None)
# listen_migration's default is a minute of listening: sweeping its other parameters must not wait.
WAITS = ("VirtqDriver.wait_interrupt", "VirtqDevice.wait_kick", "VhostUserBackend.wait_for")
WAITS += ("listen_migration",)
for _wait in WAITS:
    OVERRIDES[(_wait, "timeout")] = FINITE_TIMEOUT
NEVER_OMIT = {(w, "timeout") for w in WAITS}

MiB = 1 << 20

# Valid values for required parameters, so that a sweep reaches the parameter under test.
BENIGN: dict[str, Any] = {
    "addr": 0,
    "address": "127.0.0.1:0",
    "data": b"abc",
    "encoding_name": "pfn",
    "fd": "MEMFD",
    "head": 0,
    "key": 3,
    "length": 16,
    "memory": "MEM",
    "npages": 64,
    "pages": "PAGES",
    "pfn": 0,
    "segments": [],
    "share": 0.5,
    "size": "1MiB",
    "start": 0,
    "value": 1,
    "_tb": None,
    "_ty": None,
    "_value": None,
    "Session.set_target_pages/pages": 8,
    # Benchmarks default to an 8 GiB guest: always a tiny one here.
    "bench_inflate_table/guest": "4MiB",
    "bench_migrate_rows/guest": "4MiB",
    "bench_migrate_rows/variants": ["off"],
    "bench_migrate_rows/repetitions": 1,
    "bench_inflate_table/rounds": 1,
    "pump_queue/buffers": 8,
    "bench_huge_table/guest": "4MiB",
    "bench_huge_table/rounds": 1,
    "bench_huge_table/backings": ["thp"],
    "bench_huge_table/reserve": False,
    "socket": "vu-sweep.sock",
}
# Values each parameter is swept through, the others benign: every kind of hostile number.
EXTREMES: list[Any] = [-1, 2**62, 2**63 - 1, 2**64, -(2**63) - 1, 2**200, math.nan, math.inf]
EXTREMES += [-math.inf, 1e300, -1.5, "1e400", "16EiB", "-1", "", None, object(), [None]]
# Values that are invalid for every parameter that sizes work (no valid huge count or None).
INVALID_EXTREMES: list[Any] = [-1, 2**64, 2**200, math.nan, math.inf, -math.inf, 1e300, "1e400"]
INVALID_EXTREMES += [object(), [None]]


def public_callables() -> dict[str, Callable[..., Any] | None]:
    """Every public function, constructor, method and property, by qualified name."""
    out: dict[str, Callable[..., Any] | None] = {}
    for name in vballoon.__all__:
        obj = getattr(vballoon, name)
        if name == "__version__" or not callable(obj):
            continue  # constants (the version, DEFAULT_QUEUE_SIZE) are not called
        if isinstance(obj, type) and issubclass(obj, BaseException):
            out[name] = None  # exception class: checked for its bases, not called
            continue
        if isinstance(obj, type):
            out[f"{name}.__new__"] = obj
            for member in vars(obj):
                if member in ("__doc__", "__module__", "__new__", "__hash__", "__dict__"):
                    continue
                # Private helpers and Python's own slots are not API; `__init__` of a Python
                # class is driven through `__new__` (calling the class), never on a live object.
                dunder = member.startswith("__") and member.endswith("__")
                if (member.startswith("_") and not dunder) or member in ("__init__", "__weakref__"):
                    continue
                out[f"{name}.{member}"] = getattr(obj, member)
            continue
        out[name] = obj
    return out


def strategy_for(qualname: str, param: inspect.Parameter) -> Any:
    if (qualname, param.name) in OVERRIDES:
        return OVERRIDES[(qualname, param.name)]
    if param.name in TIMEOUT_NAMES:
        return TIMEOUT
    if param.name in ("memory",):
        return st.one_of(st.just("MEM"), HOSTILE)
    if param.name in ("pages",):
        return st.one_of(st.just("PAGES"), HOSTILE)
    return HOSTILE


def signature(obj: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def draw_call(
    qualname: str, fn: Any, data: st.DataObject, recv: Receivers
) -> tuple[list[Any], dict[str, Any]]:
    """Draws arguments for `fn`: each parameter hostile, omitted when it has a default."""
    sig = signature(fn)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if sig is None:
        # No signature (a slot wrapper like __len__): 0-2 hostile positional arguments.
        return data.draw(st.lists(HOSTILE, max_size=2)), {}
    for p in sig.parameters.values():
        if p.name in ("self", "cls") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        # Benchmarks' guest sizes and the waits' timeouts are always given: their defaults
        # (an 8 GiB guest, no time limit) are real work.
        omit = (qualname, p.name) not in NEVER_OMIT and f"{qualname}/{p.name}" not in BENIGN
        if p.default is not p.empty and omit and data.draw(st.booleans()):
            continue
        v = data.draw(strategy_for(qualname, p))
        if v == "MEM" and isinstance(v, str):
            v = recv.mem
        elif v == "PAGES" and isinstance(v, str):
            v = vballoon.PageSet(64, [(1, 3)])
        if p.kind == p.KEYWORD_ONLY:
            kwargs[p.name] = v
        else:
            args.append(v)
    if data.draw(st.integers(0, 9)) == 0:
        args.append(data.draw(HOSTILE))  # one argument too many
    return args, kwargs


def benign(qualname: str, p: inspect.Parameter, recv: Receivers) -> Any:
    v = BENIGN.get(f"{qualname}/{p.name}", BENIGN.get(p.name, 0))
    if v == "MEM":
        return recv.mem
    if v == "MEMFD":
        return recv.memfd.memfd
    if v == "PAGES":
        return vballoon.PageSet(64, [(1, 3)])
    return v


def sweep_calls(
    qualname: str, fn: Any, recv: Receivers
) -> list[tuple[str, list[Any], dict[str, Any]]]:
    """Each parameter through every extreme value, the others benign (or left at default)."""
    sig = signature(fn)
    if sig is None:
        return [(qualname, [v], {}) for v in EXTREMES]
    params = [
        p
        for p in sig.parameters.values()
        if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    out = []
    for target in params:
        cautious = (qualname, target.name) in OVERRIDES or target.name in TIMEOUT_NAMES
        for v in INVALID_EXTREMES if cautious else EXTREMES:
            args: list[Any] = []
            kwargs: dict[str, Any] = {}
            for p in params:
                keep = (
                    p is target
                    or p.default is p.empty
                    or f"{qualname}/{p.name}" in BENIGN
                    or (qualname, p.name) in NEVER_OMIT
                )
                if not keep:
                    continue
                if p is target:
                    val = v
                elif (qualname, p.name) in NEVER_OMIT:
                    val = 0.0
                else:
                    val = benign(qualname, p, recv)
                if p.kind == p.KEYWORD_ONLY:
                    kwargs[p.name] = val
                else:
                    args.append(val)
            out.append((qualname, args, kwargs))
    return out


def run(log_path: str) -> int:
    log_path = os.path.abspath(log_path)
    # Every socket a call binds lands here (relative paths included), removed at the end.
    home = tempfile.mkdtemp(prefix="vballoon-hostile-")
    os.makedirs(os.path.join(home, "sub"))
    os.chdir(home)
    try:
        return drive_all(log_path)
    finally:
        os.chdir("/")
        shutil.rmtree(home, ignore_errors=True)


def drive_all(log_path: str) -> int:
    recv = Receivers()
    calls = public_callables()
    failures: list[str] = []
    slow: list[tuple[float, str]] = []
    log = open(log_path, "w", buffering=1)

    def attempt(
        desc: str, call: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        log.write(desc + "\n")
        t0 = time.monotonic()
        binder = desc.startswith(tuple(f"{b}(" for b in SOCKET_BINDERS))
        try:
            made = call(*args, **kwargs)
            if binder:
                made.close()  # its threads and socket go now, not at interpreter exit
        except ALLOWED:
            pass
        except OSError as e:
            if not (binder and e.errno is not None):
                failures.append(f"{desc}: {type(e).__qualname__} (errno {e.errno}): {e}")
                raise AssertionError(failures[-1]) from e
        except BaseException as e:
            failures.append(f"{desc}: {type(e).__module__}.{type(e).__qualname__}: {e}")
            raise AssertionError(failures[-1]) from e
        finally:
            slow.append((time.monotonic() - t0, desc[:160]))

    def make_drive(qualname: str, fn: Any) -> Callable[[], None]:
        cls, _, member = qualname.rpartition(".")
        expensive = qualname.startswith(("bench_", "Guest.", "listen_", "pump_", "Session."))
        expensive = expensive or qualname == "VhostUserBackend.wait_for"

        @settings(
            max_examples=6 if expensive else 20,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=st.data())
        def drive(data: st.DataObject) -> None:
            if cls and member != "__new__":
                for obj in recv.of(cls, data):
                    attr = inspect.getattr_static(type(obj), member)
                    if type(attr).__name__ == "getset_descriptor":
                        attempt(f"{qualname} (property)", getattr, [obj, member], {})
                        continue
                    bound = getattr(obj, member)
                    args, kwargs = draw_call(qualname, fn, data, recv)
                    attempt(f"{qualname}(*{args!r}, **{kwargs!r})", bound, args, kwargs)
                    if qualname == "Guest.migrate":
                        recv.guest.resume()
                return
            args, kwargs = draw_call(qualname, fn, data, recv)
            attempt(f"{qualname}(*{args!r}, **{kwargs!r})", fn, args, kwargs)

        return drive

    for qualname, fn in sorted(calls.items()):
        if fn is None:
            continue
        cls, _, member = qualname.rpartition(".")
        if cls in NO_INSTANCE and member != "__new__":
            continue
        try:
            for name, args, kwargs in sweep_calls(qualname, fn, recv):
                if cls and member != "__new__":
                    for obj in recv.of(cls, None):
                        if type(inspect.getattr_static(type(obj), member)).__name__ == (
                            "getset_descriptor"
                        ):
                            continue
                        bound = getattr(obj, member)
                        attempt(f"{name}(*{args!r}, **{kwargs!r})", bound, args, kwargs)
                        if qualname == "Guest.migrate":
                            recv.guest.resume()
                else:
                    attempt(f"{name}(*{args!r}, **{kwargs!r})", fn, args, kwargs)
            make_drive(qualname, fn)()
        except AssertionError:
            break
    recv.close()
    log.close()
    if os.environ.get("HOSTILE_PROFILE"):
        for d, desc in sorted(slow, reverse=True)[:15]:
            print(f"{d:7.3f} s  {desc}", file=sys.stderr)
    if failures:
        print("\n".join(failures[-3:]), file=sys.stderr)
        return 1
    return 0


# Result classes no cheap call returns here, with why (their methods are the macro-made
# `to_dict` and `__repr__` every other result class has, and those are driven).
NO_INSTANCE = {"HugetlbPool": "only hugetlb RAM has one, and that needs reserved pool pages"}


def uncovered() -> list[str]:
    """Public names this driver cannot call: none, as long as `public_callables` sees them."""
    missing = []
    recv_classes = {
        "Closeable",
        "BenchSnapshot",
        "DestReport",
        "DeviceCounters",
        "GuestInfo",
        "GuestStats",
        "HugePageStats",
        "HugeRow",
        "HugeTable",
        "InflateRow",
        "InflateTable",
        "MigrateRow",
        "MigrationProgress",
        "PumpResult",
        "BenchProgress",
        "RoundStats",
        "VhostStatus",
        "VhostUserBackend",
        "VhostUserBalloon",
        "GuestMemory",
        "GuestView",
        "PageSet",
        "QueueLayout",
        "VirtqDriver",
        "VirtqDevice",
        "Chain",
        "InflateReport",
        "Guest",
        "MigrationResult",
        "Session",
    }
    for qualname, fn in public_callables().items():
        cls, _, member = qualname.rpartition(".")
        if cls in NO_INSTANCE:
            continue
        if fn is None and not issubclass(getattr(vballoon, qualname), vballoon.VBalloonError):
            missing.append(f"{qualname} (an exception outside VBalloonError)")
        if cls and member != "__new__" and cls not in recv_classes:
            missing.append(qualname)
    return missing


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
