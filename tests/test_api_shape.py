"""The shape of the public Python API: an explicit package, `Literal` names that the native
layer accepts (and nothing else), typed results whose only dicts come from `to_dict()`,
docstrings on every public name, and defaults that agree with the Rust core's."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import tempfile
from pathlib import Path

import pytest

import vballoon
from vballoon import ConfigError, _native
from vballoon.types import CHOICES

PACKAGE = Path(vballoon.__file__).parent


def test_the_package_names_its_api_explicitly():
    source = (PACKAGE / "__init__.py").read_text()
    assert "import *" not in source
    assert "__all__ = [" in source
    assert len(set(vballoon.__all__)) == len(vballoon.__all__)
    # Everything the native module exports is public here, plus the Python layer's own.
    assert set(_native.__all__) <= set(vballoon.__all__)
    assert "VhostUserBalloon" in vballoon.__all__
    for name in vballoon.__all__:
        assert hasattr(vballoon, name), name


def _public_objects():
    """(qualified name, object) of every public module, class, function and method."""
    mods = [vballoon] + [
        importlib.import_module(f"vballoon.{m.name}")
        for m in pkgutil.iter_modules(vballoon.__path__)
        if m.name != "__main__"
    ]
    for mod in mods:
        yield mod.__name__, mod
        for name in getattr(mod, "__all__", None) or [n for n in vars(mod) if n[0] != "_"]:
            obj = getattr(mod, name)
            home = getattr(obj, "__module__", None)
            if not (inspect.isclass(obj) or inspect.isroutine(obj)) or home not in (
                mod.__name__,
                "vballoon" if mod is vballoon else None,
            ):
                continue  # imported from elsewhere: checked where it is defined
            yield f"{mod.__name__}.{name}", obj
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                for member, value in vars(obj).items():
                    if member[0] != "_" and (callable(value) or inspect.isdatadescriptor(value)):
                        yield f"{mod.__name__}.{name}.{member}", value


def test_every_public_name_has_a_docstring():
    names = dict(_public_objects())
    assert len(names) > 300  # modules, classes, functions, methods and attributes
    missing = [n for n, obj in names.items() if not (inspect.getdoc(obj) or "").strip()]
    assert missing == []


# Each enum-like parameter: a call that takes `value` for it.
ENUM_CALLS = {
    "backing": lambda v: vballoon.GuestMemory("4MiB", backing=v),
    "encoding": lambda v: vballoon.Session("4MiB", encoding=v).close(),
    "discard": lambda v: vballoon.Session("4MiB", discard=v).close(),
    "mode": lambda v: vballoon.Session("4MiB", mode=v).close(),
    "abi": lambda v: vballoon.Session("4MiB", abi=v).close(),
    "notify": lambda v: vballoon.virtqueue_pair(vballoon.GuestMemory("1MiB"), 0, 16, notify=v),
    "hints": lambda v: vballoon.Guest("4MiB", used="1MiB").migrate(hints=v),
    "dirty_tracking": lambda v: vballoon.Guest("4MiB", used="1MiB").migrate(dirty_tracking=v),
    "link": lambda v: vballoon.Guest("4MiB", used="1MiB").migrate(link=v),
    "scenario": lambda v: vballoon.Guest("4MiB", scenario=v).close(),
    "variant": lambda v: vballoon.bench_migrate_rows(["m1"], [v], guest="4MiB", repetitions=1),
    "feature": lambda v: _backend_offering(v),
}


def _backend_offering(feature: str) -> None:
    """A vhost-user backend offering `feature` (and STATS_VQ, which MISC_VQ needs)."""
    with tempfile.TemporaryDirectory() as tmp:
        features = sorted({feature, "stats_vq"})
        vballoon.VhostUserBackend(f"{tmp}/vu.sock", features=features).close()


@pytest.mark.parametrize("param", sorted(CHOICES))
def test_every_literal_name_is_accepted_and_others_are_config_errors(param):
    call = ENUM_CALLS[param]
    for value in CHOICES[param]:
        try:
            call(value)
        except ConfigError:
            raise  # the native layer refuses a name the alias offers
        except vballoon.VBalloonError:
            pass  # taken, but this host lacks something (no hugetlb pool pages reserved)
    for bad in ("telepathy", "", "BITMAP ", "m9"):
        if bad.strip().lower() in CHOICES[param]:
            continue  # the native layer ignores case and blanks
        with pytest.raises(ConfigError) as e:
            call(bad)
        assert isinstance(e.value, ValueError)


def test_the_stubs_type_every_enum_like_parameter_with_its_alias():
    aliases = {
        "backing": "Backing", "dest_backing": "Backing", "encoding": "Encoding",
        "encoding_name": "Encoding", "discard": "DiscardPolicy", "mode": "RunMode",
        "abi": "AbiMode", "notify": "NotifyMode", "hints": "HintMode",
        "dirty_tracking": "DirtyTracking", "link": "Link", "scenario": "Scenario",
        "scenarios": "Scenario", "variants": "MigrateVariant", "features": "Feature",
        "backings": "Backing",
    }  # fmt: skip
    seen = set()
    tree = ast.parse((PACKAGE / "_native.pyi").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.arg in aliases and node.annotation is not None:
            text = ast.unparse(node.annotation)
            assert aliases[node.arg] in text, f"{node.arg}: {text}"
            seen.add(node.arg)
    assert seen == set(aliases)


def _results():
    """One instance of every result class, made cheaply."""
    mem = vballoon.GuestMemory("4MiB", backing="memfd")
    with vballoon.Session("16MiB") as s:
        s.set_target("4MiB")
        report = s.run_until_settled()
        stats, counters = s.stats(), s.device_counters()
    with vballoon.Guest("8MiB", used="1MiB") as g:
        result = g.migrate()
        info, prog = g.info(), g.progress()
    probe = vballoon.BenchProgress()
    inflate = vballoon.bench_inflate_table("4MiB", rounds=1, progress=probe)
    rows = vballoon.bench_migrate_rows(["m1"], ["off"], guest="4MiB", repetitions=1)
    drv, _ = vballoon.virtqueue_pair(vballoon.GuestMemory("1MiB"), 0, 16)
    return [
        report, stats, counters, result, result.per_round[0], info, prog, probe.snapshot(),
        inflate, inflate.rows[0], rows[0], drv.layout, mem.huge_page_stats(),
        vballoon.pump_queue(vballoon.GuestMemory("1MiB"), 8),
    ]  # fmt: skip


def _plain(value):
    """What to_dict() makes of an attribute value: nested results as dicts."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def test_results_are_typed_and_their_dicts_come_from_to_dict():
    seen = set()
    for r in _results():
        seen.add(type(r).__name__)
        d = r.to_dict()
        assert json.loads(json.dumps(d)) == json.loads(json.dumps(d))  # plain JSON values
        attrs = [a for a in dir(type(r)) if not a.startswith("_") and a != "to_dict"]
        if type(r).__name__ == "GuestStats":
            assert d == {a: getattr(r, a) for a in attrs if getattr(r, a) is not None}
        else:
            assert d == {a: _plain(getattr(r, a)) for a in attrs}
        assert not isinstance(r, dict)
        assert repr(r).startswith(type(r).__name__ + "(")
        with pytest.raises(AttributeError):
            setattr(r, attrs[0], 1)  # read-only
    assert len(seen) == 14


def test_defaults_agree_with_the_rust_core():
    # abi::DEFAULT_QUEUE_SIZE, exported by the native module.
    assert vballoon.DEFAULT_QUEUE_SIZE == 128
    assert inspect.signature(vballoon.Session).parameters["queue_size"].default == 128
    with vballoon.Session("4MiB") as s:
        assert s.device_counters().queue_errors == 0


def test_bench_defaults_are_the_cores():
    # None: the core's own default (every scenario, every variant; thp and hugetlb).
    sig = inspect.signature(vballoon.bench_migrate_rows).parameters
    assert sig["scenarios"].default is None and sig["variants"].default is None
    assert inspect.signature(vballoon.bench_huge_table).parameters["backings"].default is None


def test_real_guest_results_are_frozen_dataclasses_with_to_dict():
    from vballoon.realguest_results import BalloonMove, R1Round

    move = BalloonMove(1.5, 0.1, 0.2, 256, 4, 0, 1, 256, 1 << 20)
    r = R1Round(inflate=move, deflate=move)
    d = r.to_dict()
    assert (
        d["inflate"]
        == d["deflate"]
        == {
            "secs": 1.5,
            "guest_cpu_secs": 0.1,
            "backend_cpu_secs": 0.2,
            "pages": 256,
            "inflate_buffers": 4,
            "deflate_buffers": 0,
            "discard_calls": 1,
            "pages_discarded": 256,
            "blocks_returned_bytes": 1 << 20,
        }
    )  # fmt: skip (an unset optional field is left out)
    assert BalloonMove(*[1] * 9, memtotal_drop_bytes=5).to_dict()["memtotal_drop_bytes"] == 5
    with pytest.raises(AttributeError):
        r.inflate = move  # type: ignore[misc]
