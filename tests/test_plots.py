"""Figures (`--plot`, `vballoon report`) drawn from small real runs."""

import json
import subprocess
import sys

import pytest

from vballoon import cli, plot, schema

pytest.importorskip("matplotlib")

from test_output import SMALL, run_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """One small saved document per command (written by the CLI, read back as JSON)."""
    out = {}
    folder = tmp_path_factory.mktemp("results")
    for command, argv in SMALL.items():
        path = folder / (command.replace(" ", "-") + ".json")
        proc = subprocess.run(
            [sys.executable, "-m", "vballoon.cli", *argv, "--json", "--quiet"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        path.write_text(proc.stdout)
        out[command] = (path, schema.validate(json.loads(proc.stdout)))
    return out


def expected_labels(doc):
    """What a reader must find in the figure: every variant (or configuration) measured."""
    want = set()
    for part in schema.parts(doc):
        rows = part["rows"]
        if part["kind"] == "inflate":
            want |= {r["name"] for r in rows if r["encoding"] is not None}
            want.add("floor")
        elif part["kind"] == "migrate":
            want |= {r["variant"] for r in rows} | {r["scenario"].upper() for r in rows}
            want.add("link floor")
        elif part["kind"] == "virtq":
            want |= {f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}, "
                     f"{r['segments']} seg" for r in rows}  # fmt: skip
        elif part["kind"] == "migrate_send":
            want |= {"pages dirtied", "MB sent"} | {str(r["round"]) for r in rows[:10]}
    return want


def check_file(path, fmt):
    data = path.read_bytes()
    assert len(data) > 10_000, f"{path} is only {len(data)} bytes"
    if fmt == "png":
        assert data.startswith(PNG_MAGIC)
    else:
        assert data.lstrip().startswith(b"<?xml") and b"<svg" in data[:2000]


@pytest.mark.parametrize("fmt", ["png", "svg"])
@pytest.mark.parametrize("command", sorted(SMALL))
def test_every_measurement_draws_every_variant(docs, tmp_path, command, fmt):
    _, doc = docs[command]
    fig = plot.figure(doc)
    missing = expected_labels(doc) - plot.labels(fig)
    assert not missing, f"not in the {command} figure: {missing}"
    assert doc["machine"]["hostname"] in fig.get_suptitle()
    assert doc["date"] in fig.get_suptitle()
    path = plot.save(doc, tmp_path / f"figure.{fmt}")
    check_file(path, fmt)


def test_plot_option_writes_the_figure(capsys, tmp_path):
    path = tmp_path / "inflate.png"
    _, err = run_json(capsys, [*SMALL["bench inflate"], "--plot", str(path)])
    check_file(path, "png")
    assert f"figure: {path}" in err


def test_migrate_send_plots_its_rounds(tmp_path, capsys):
    from migrate_support import cli_listener, free_port, wait_listening

    port = free_port()
    listener = cli_listener(port, "64MiB")
    try:
        wait_listening(port)
        path = tmp_path / "send.svg"
        argv = ["migrate", "send", "--to", f"127.0.0.1:{port}", "--size", "64MiB",
                "--used", "16MiB", "--dirty-rate", "64MiB", "--downtime", "2ms",
                "--bandwidth", "1Gbit", "--quiet", "--plot", str(path)]  # fmt: skip
        assert cli.main(argv) == 0
        listener.communicate(timeout=60)
    finally:
        listener.kill()
    doc = schema.validate(json.loads(capsys.readouterr().out))
    assert doc["kind"] == "migrate_send"
    assert len(doc["rows"]) == doc["summary"]["rounds"] >= 2
    assert doc["summary"]["mismatched_pages"] == 0
    check_file(path, "svg")
    assert not expected_labels(doc) - plot.labels(plot.figure(doc))


def test_report_renders_saved_documents(docs, tmp_path):
    paths = [str(p) for p, _ in docs.values()]
    out = tmp_path / "report"
    assert cli.main(["report", *paths, "-o", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    for path, doc in docs.values():
        check_file(out / f"{path.stem}.png", "png")
        assert f"]({path.stem}.png)" in summary
        for part in schema.parts(doc):
            for r in part["rows"]:
                label = r.get("name") or r.get("variant") or r.get("step") or r["threads"]
                assert f"| {label} |" in summary


def test_unknown_formats_and_kinds_are_refused(docs, tmp_path):
    _, doc = docs["bench virtq"]
    with pytest.raises(plot.PlotError, match=r"\.png or \.svg"):
        plot.save(doc, tmp_path / "figure.gif")
    with pytest.raises(plot.PlotError, match="nothing to plot"):
        plot.figure({**doc, "rows": []})


def test_bad_arguments_fail_before_measuring(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main([*SMALL["bench inflate"], "--plot", str(tmp_path / "figure.gif")])
    assert e.value.code == 2
    assert ".png or .svg" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text('{"schema": "vballoon.results"}')
    assert cli.main(["report", str(tmp_path / "broken.json"), "-o", str(tmp_path / "out")]) == 1
    assert "missing 'schema_version'" in capsys.readouterr().err
