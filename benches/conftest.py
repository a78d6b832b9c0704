"""pytest-benchmark runs: `pytest benches/` (kept out of the default test run)."""
