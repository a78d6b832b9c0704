"""Keyed migration from Python and the CLI: `key=` / `--key-file`, refusal of a wrong key,
and the listener's refusal of a non-loopback address without a key."""

import os

import pytest
from migrate_support import cli_listener, free_port, migrate_to_cli

from vballoon import ConfigError, Guest, MigrationError, listen_migration

MiB = 1 << 20


def test_keyed_cli_listener_and_python_source(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_bytes(os.urandom(32).hex().encode() + b"\n")
    g = Guest("64MiB", used="8MiB", backing="memfd")
    key = key_file.read_bytes().strip()
    r, dest = migrate_to_cli(g, "64MiB", "--key-file", str(key_file), key=key)
    assert dest["mismatched_pages"] == 0 == r.mismatched_pages
    assert dest["verified_pages"] == r.verified_pages >= 8 * MiB // 4096


def test_wrong_key_is_refused(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_bytes(b"k" * 32)
    port = free_port()
    listener = cli_listener(port, "64MiB", "--key-file", str(key_file))
    try:
        assert "listening" in listener.stdout.readline()
        g = Guest("64MiB", used="8MiB")
        with pytest.raises(MigrationError, match=r"(?i)authenticat"):
            g.migrate(to=f"127.0.0.1:{port}", key=b"x" * 32, timeout=10)
        _, err = listener.communicate(timeout=60)
    finally:
        listener.kill()
    assert listener.returncode == 1
    # Errors go to stderr; stdout carries only the report.
    assert "authentication" in err


def test_non_loopback_listener_needs_a_key_or_insecure():
    with pytest.raises(MigrationError, match="--key-file"):
        listen_migration("0.0.0.0:0", "16MiB", timeout=0.2)
    # Explicitly insecure, or with a key, it listens (and times out: nobody connects).
    with pytest.raises(MigrationError, match=r"(?i)time"):
        listen_migration("0.0.0.0:0", "16MiB", timeout=0.2, insecure=True)
    with pytest.raises(MigrationError, match=r"(?i)time"):
        listen_migration("0.0.0.0:0", "16MiB", timeout=0.2, key=b"k" * 16)


def test_short_key_is_a_config_error():
    with pytest.raises(ConfigError, match="key"):
        listen_migration("127.0.0.1:0", "16MiB", timeout=0.2, key=b"short")
    with pytest.raises(ConfigError, match="key"):
        Guest("16MiB", used="1MiB").migrate(key=b"short")
