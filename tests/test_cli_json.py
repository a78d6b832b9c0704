"""The two migration commands' machine-readable output: `migrate listen --json` and
`migrate send` (whose output is always the document) print one JSON document on stdout and
nothing else, so `vballoon ... | python -m json.tool` works."""

from __future__ import annotations

import json
import threading

from migrate_support import cli_listener, free_port, wait_listening
from test_output import run_json

import vballoon
from vballoon import cli, schema

MiB = 1 << 20


def test_migrate_listen_json_is_one_schema_document():
    port = free_port()
    listener = cli_listener(port, "64MiB", "--json")
    try:
        wait_listening(port)
        r = vballoon.Guest("64MiB", used="8MiB").migrate(to=f"127.0.0.1:{port}", timeout=10)
        out, err = listener.communicate(timeout=60)
    finally:
        listener.kill()
    assert listener.returncode == 0, err
    assert "listening" in err
    doc = schema.validate(json.loads(out))  # stdout is one document and nothing else
    assert doc["kind"] == "migrate_listen"
    assert doc["scenario"]["guest_bytes"] == 64 * MiB
    (row,) = doc["rows"]
    assert row["mismatched_pages"] == 0 == r.mismatched_pages
    assert row["verified_pages"] == r.verified_pages


def test_migrate_send_prints_only_its_document(capsys):
    port = free_port()
    received: list[vballoon.DestReport] = []
    dest = threading.Thread(
        target=lambda: received.append(
            vballoon.listen_migration(f"127.0.0.1:{port}", "32MiB", timeout=30)
        )
    )
    dest.start()
    wait_listening(port)
    argv = ["migrate", "send", "--to", f"127.0.0.1:{port}", "--size", "32MiB"]
    assert cli.main([*argv, "--used", "4MiB", "--backing", "anonymous", "--quiet"]) == 0
    dest.join(30)
    out, err = capsys.readouterr()
    doc = schema.validate(json.loads(out))
    assert doc["kind"] == "migrate_send" and doc["rows"]
    assert doc["summary"]["mismatched_pages"] == 0 == received[0].mismatched_pages
    assert "source:" in err  # what it says for people goes to stderr


def test_bench_huge_json_is_one_document_and_its_table_goes_to_stderr(capsys):
    argv = ["bench", "huge", "--guest", "16MiB", "--inflate", "8MiB", "--rounds", "1"]
    doc, err = run_json(capsys, [*argv, "--backings", "thp", "--no-reserve", "--no-fragmented"])
    assert schema.validate(doc)["kind"] == "huge"
    assert {r["variant"] for r in doc["rows"]} >= {"2 MiB blocks"}
    assert doc["scenario"] == {"guest_bytes": 16 * MiB, "inflate_bytes": 8 * MiB, "rounds": 1}
    assert "I4: inflate" in err and "2 MiB blocks" in err
