"""`donut up --metrics-port`: where the metrics are served, said in the one "donut is up"
line; a port that can't be had is one line, before anything starts."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.cli.conftest import donut


def test_up_prints_the_metrics_url_in_its_ready_line_and_serves_it(tmp_path: Path, etcd_server: Any,
                                                                  etcd_prefix: str) -> None:
    env = {**{k: v for k, v in os.environ.items() if k not in ("DONUT_TOKEN", "DONUT_ENDPOINT")},
           "DONUT_HOME": str(tmp_path / "home")}
    up = subprocess.Popen([sys.executable, "-m", "donut_cli", "up", "--data-dir", str(tmp_path / "d"), "--port", "0",
                           "--http-port", "-1", "--metrics-port", "0", "--etcd-endpoints", etcd_server.endpoint,
                           "--etcd-prefix", etcd_prefix],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert up.stderr is not None
        ready = up.stderr.readline()  # (the first line it writes; an empty one if it died)
        found = re.search(r", metrics (http://127\.0\.0\.1:\d+/metrics),", ready)
        assert ready.startswith("donut is up: grpc ") and found, ready
        with urllib.request.urlopen(found.group(1), timeout=30) as answer:
            text = answer.read().decode()
        assert "# TYPE donut_grpc_requests_total counter" in text and "donut_workflows{" in text
    finally:
        up.send_signal(signal.SIGTERM)
        up.communicate(timeout=30)


def test_up_on_a_metrics_port_in_use_or_out_of_range_is_one_line(donut_home: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = donut("up", "--data-dir", str(tmp_path / "data"), "--port", "0", "--http-port", "-1",
                       "--metrics-port", port, home=donut_home)
    assert result.returncode == 1
    assert result.stderr == f"error: --metrics-port: cannot listen on 127.0.0.1:{port}: the port is in use " \
                            "(is `donut up` running already?)\n"
    result = donut("up", "--data-dir", str(tmp_path / "data"), "--metrics-port", "-2", home=donut_home)
    assert result.returncode == 2 and "'--metrics-port'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()
