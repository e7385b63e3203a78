"""Test-wide environment, set before anything imports prometheus-client: each pytest process
keeps its metrics in a directory of its own (supervisor/metrics.py), removed at exit, so
in-process tests neither read nor leave files in the host's shared one."""

import atexit
import os
import shutil
import tempfile

_metrics_dir = tempfile.mkdtemp(prefix="supervisor-test-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir
atexit.register(shutil.rmtree, _metrics_dir, ignore_errors=True)
