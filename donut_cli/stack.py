"""The whole stack on one machine (`donut up`): etcd, the dagger, cellar and users
services on one gRPC server, the scheduler with the local executor, and the gateway.

In a cluster each service is its own deployment; here they share a process and one
address so the CLI needs only that address.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from donut_common.etcd_server import EtcdServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackConfig:
    data_dir: Path
    """Everything the stack keeps: etcd data, workflow directories, logs, cellar files."""
    host: str = "127.0.0.1"
    """Address the gRPC server and the gateway listen on."""
    port: int = 7000
    """gRPC port (0: any free port)."""
    http_port: int = 7080
    """Gateway port (0: any free port; -1: no gateway)."""
    executor: str = "local"
    """Where jobs run: `local` (processes on this host)."""
    etcd_endpoints: str = ""
    """Comma-separated host:port of an external etcd; empty: start one under data_dir."""
    etcd_prefix: str = "/donut/"
    """Key prefix in etcd (lets several stacks share one cluster)."""
    default_parallelism: int = 4
    """Parallelism of workflows submitted without one."""
    lease_ttl: int = 10
    """Seconds before a dead scheduler's runs may be taken over."""
    kill_grace: float = 10.0
    """Seconds between SIGTERM and SIGKILL when a job is cancelled or times out."""
    etcd_fsync: bool = True
    """Turn off only in tests."""


@dataclass
class Stack:
    config: StackConfig
    endpoint: str = ""
    http_endpoint: str = ""
    _parts: dict[str, Any] = field(default_factory=dict)

    def start(self) -> Stack:
        from cellar_svc.server import registration as cellar_registration
        from cellar_svc.storage import LocalStorage
        from dagger_svc.executors.local import LocalExecutor
        from dagger_svc.keys import Keys
        from dagger_svc.logs import LogStore
        from dagger_svc.scheduler import Scheduler
        from dagger_svc.service import DaggerConfig, DaggerService
        from dagger_svc.servicer import registration as dagger_registration
        from dagger_svc.store import Store, connect
        from donut_common.rpc import channel, create_server
        from streamed_job.cellar import CellarClient

        c = self.config
        c.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            endpoints = c.etcd_endpoints
            if not endpoints:
                etcd = EtcdServer(c.data_dir, host="127.0.0.1", fsync=c.etcd_fsync).start()
                self._parts["etcd"] = etcd
                endpoints = etcd.endpoint
            client = connect(endpoints)
            self._parts["etcd_client"] = client
            store = Store(client, Keys(c.etcd_prefix))
            logs = LogStore(c.data_dir / "logs")
            self._parts["logs"] = logs
            data_root = c.data_dir / "workflows"
            data_root.mkdir(parents=True, exist_ok=True)
            scheduler = Scheduler(store, None, data_root, scheduler_id=_scheduler_id(c.data_dir),
                                  lease_ttl=c.lease_ttl)
            service = DaggerService(store, logs, scheduler, DaggerConfig(data_root, c.default_parallelism))
            server, port = create_server(
                f"{c.host}:{c.port}",
                [dagger_registration(service), cellar_registration(LocalStorage(c.data_dir / "cellar"))],
            )
            server.start()
            self._parts["server"] = server
            self.endpoint = f"{c.host}:{port}"
            cellar = CellarClient(channel(self.endpoint))

            def save_result(workflow_id: str, job: str, relative: str, path: Path) -> None:
                cellar.put("result", workflow_id, relative, path, job=job)

            def fetch_cache(upload_id: str, cache_path: str, destination: Path) -> None:
                cellar.get("cache", upload_id, cache_path, destination)

            if c.executor != "local":
                raise ValueError(f"executor: unknown executor {c.executor!r} (expected local)")
            executor = LocalExecutor(logs, scheduler.job_finished, save_result=save_result,
                                     fetch_cache=fetch_cache, kill_grace=c.kill_grace)
            scheduler.executor = executor
            self._parts["executor"] = executor
            scheduler.start()
            self._parts["scheduler"] = scheduler
            if c.http_port >= 0:
                self._start_gateway()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_gateway(self) -> None:
        from werkzeug.serving import make_server

        from gateway.app import create_app

        app = create_app({"DONUT_ENDPOINT": self.endpoint})
        http = make_server(self.config.host, self.config.http_port, app, threaded=True)
        self.http_endpoint = f"http://{self.config.host}:{http.server_port}"
        thread = threading.Thread(target=http.serve_forever, name="gateway", daemon=True)
        thread.start()
        self._parts["http"] = http

    def stop(self) -> None:
        """Stops everything, jobs included; state stays in etcd for the next start."""
        parts = self._parts
        if "http" in parts:
            parts.pop("http").shutdown()
        if "scheduler" in parts:
            parts.pop("scheduler").stop()
        if "executor" in parts:
            parts.pop("executor").close()
        if "server" in parts:
            parts.pop("server").stop(grace=1).wait()
        if "logs" in parts:
            parts.pop("logs").close()
        if "etcd_client" in parts:
            parts.pop("etcd_client").close()
        if "etcd" in parts:
            parts.pop("etcd").stop()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _scheduler_id(data_dir: Path) -> str:
    """A scheduler id kept with the data, so a restarted stack takes its runs back at once."""
    path = data_dir / "scheduler-id"
    if not path.exists():
        path.write_text(uuid.uuid4().hex)
    return path.read_text().strip()
