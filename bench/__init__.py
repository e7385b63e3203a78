"""Benchmarks of the Session Supervisor, each run side by side with its baseline.

`python -m bench` (see bench/__main__.py and docs/PERFORMANCE.md)."""
