"""The CLI's machine-readable output: `--json` documents, the schema, progress counters."""

import json

import pytest

import vballoon
from vballoon import cli, progress, schema

MiB = 1 << 20

SMALL = {
    "bench virtq": ["bench", "virtq", "--ring-guest", "16MiB", "--buffers", "2000"],
    "bench inflate": [
        "bench", "inflate", "--guest", "32MiB", "--inflate", "24MiB", "--rounds", "1",
    ],
    "bench migrate": ["bench", "migrate", "--guest", "32MiB", "--repetitions", "1"],
    "demo": [
        "demo", "--ring-guest", "16MiB", "--buffers", "2000", "--guest", "32MiB",
        "--inflate", "24MiB", "--rounds", "1", "--migrate-guest", "32MiB",
    ],
}  # fmt: skip


def run_json(capsys, argv):
    """Runs the CLI in this process with --json; returns (parsed stdout, stderr)."""
    assert cli.main([*argv, "--json", "--quiet"]) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err  # the whole of stdout must be one JSON document


@pytest.mark.parametrize("command", sorted(SMALL))
def test_json_is_the_only_thing_on_stdout_and_follows_the_schema(capsys, command):
    doc, err = run_json(capsys, SMALL[command])
    assert schema.validate(doc) is doc
    assert doc["schema_version"] == schema.SCHEMA_VERSION
    assert doc["command"] == command
    assert doc["machine"]["cpus"] >= 1
    assert "┃" in err  # the table went to stderr
    for part in schema.parts(doc):
        assert part["rows"], part["kind"]


def test_bench_json_rows_are_the_native_rows(capsys):
    doc, _ = run_json(capsys, SMALL["bench inflate"])
    names = [r["name"] for r in doc["rows"]]
    assert names[:3] == ["pfn", "pfn+coalesce", "bitmap"]
    assert any(n.startswith("floor") for n in names)
    assert doc["scenario"]["guest_bytes"] == 32 * MiB
    assert doc["scenario"]["inflate_bytes"] == 24 * MiB
    assert doc["scenario"]["floor_secs"] > 0
    assert "text" not in doc["scenario"]


def _good():
    return schema.document("bench virtq", "virtq", {"buffers": 1}, [
        {"threads": 1, "segments": 1, "buffers_per_second": 1.0, "kicks": 1.0,
         "interrupts": 0.0, "seconds": 0.1},
    ])  # fmt: skip


def test_schema_rejects_what_it_does_not_describe():
    good = _good()
    assert schema.validate(json.loads(schema.dumps(good))) == good
    for broken, problem in [
        ({**good, "schema_version": 99}, "schema_version"),
        ({k: v for k, v in good.items() if k != "machine"}, "machine"),
        ({**good, "kind": "nonsense"}, "unknown kind"),
        ({**good, "date": "yesterday"}, "ISO 8601"),
        ({**good, "rows": [{**good["rows"][0], "threads": True}]}, "threads: bool"),
        ({**good, "rows": [{"threads": 1}]}, "missing 'segments'"),
        ({**good, "kind": "demo"}, "parts"),
    ]:
        with pytest.raises(schema.SchemaError, match=problem) as e:
            schema.validate(broken)
        assert isinstance(e.value, ValueError)
        assert e.value.problems
    with pytest.raises(schema.SchemaError):
        schema.document("x", "nonsense", {}, [])


def test_migration_result_to_dict_carries_its_rounds_in_the_schema_row_shape():
    g = vballoon.Guest("64MiB", used="8MiB")
    r = g.migrate(dirty_rate="64MiB", downtime="2ms", bandwidth="1Gbit")
    d = r.to_dict()
    assert len(d["per_round"]) == len(r.per_round) == r.rounds >= 2
    assert [x.to_dict() for x in r.per_round] == d["per_round"]
    assert r.per_round[-1].stop_and_copy and not r.per_round[0].stop_and_copy
    assert sum(x.bytes_sent for x in r.per_round) <= r.bytes_sent
    assert sum(x.data_pages for x in r.per_round) == r.pages_sent
    doc = schema.document("migrate send", "migrate_send", {}, d.pop("per_round"), summary=d)
    schema.validate(json.loads(json.dumps(doc)))


def test_bench_progress_counts_every_migration_and_shows_the_running_one():
    probe = vballoon.BenchProgress()
    seen = []

    def poll():
        seen.append(probe.snapshot())

    rows = progress.run_in_thread(
        lambda: vballoon.bench_migrate_rows(
            ["m1", "m2"], ["off", "bitmap"], guest="32MiB", repetitions=2, progress=probe
        ),
        poll,
    )
    s = probe.snapshot()
    # Two scenario builds, then 2 variants x 2 repetitions on each.
    assert s.steps_total == s.steps_done == 2 + 2 * 2 * 2
    assert len(rows) == 4
    assert s.round >= 1 and s.pages_total == 32 * MiB // 4096
    assert s.label == "M2 2/2: bitmap"
    assert all(x.steps_done <= x.steps_total for x in seen)


def test_progress_bars_follow_the_counters():
    probe = vballoon.BenchProgress()
    vballoon.bench_inflate_table("16MiB", "8MiB", rounds=1, progress=probe)
    with progress.Bars(True) as bars:
        steps, inner = bars.add("x"), bars.add("y")
        progress._bench_poll(bars, steps, inner, probe)
        task = bars._progress.tasks[0]
        assert task.completed == task.total == probe.snapshot().steps_total > 0
        assert task.description.startswith("round 1/1: ")
    with progress.Bars(False) as off:
        assert off.add("nothing") is None


def test_progress_is_off_without_a_terminal_or_when_quiet(monkeypatch):
    assert not progress.enabled(quiet=True)

    class Tty:
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Tty())
    assert progress.enabled()
    assert not progress.enabled(quiet=True)


def test_run_in_thread_raises_the_workers_exception_here():
    def fail():
        raise vballoon.ConfigError("bad")

    with pytest.raises(vballoon.ConfigError, match="bad"):
        progress.run_in_thread(fail, lambda: None)


def test_inflate_report_to_dict_matches_its_attributes_and_is_json():
    with vballoon.Session("64MiB", encoding="bitmap") as s:
        s.guest_fill("16MiB")
        s.set_target("32MiB")
        r = s.run_until_settled()
    d = json.loads(json.dumps(r.to_dict()))
    assert d["pages_inflated"] == 32 * MiB // 4096
    public = {k for k in dir(r) if not k.startswith("_") and k != "to_dict"}
    assert set(d) == public
    assert all(d[k] == getattr(r, k) for k in public)
