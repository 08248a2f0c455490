"""Wires the cellar onto a gRPC server, and runs it as a process.

`registration` lets one server host several services (see `donut_common.rpc.create_server`);
`create_server` is the cellar alone; `main` is the command line
(`python -m cellar_svc.server --listen 127.0.0.1:7002 --root DIR`, or `--storage s3 --s3-endpoint
URL --s3-bucket NAME` with the credentials in the environment), which stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import grpc

from cellar_svc.backends import BACKENDS, SweepSettings, open_storage, s3_settings, start_sweeper
from cellar_svc.servicer import DEFAULT_MAX_FILE_SIZE, CellarServicer
from cellar_svc.storage import Storage
from donut.cellar.v1 import cellar_pb2, cellar_pb2_grpc
from donut_common import rpc
from donut_common.auth import AuthInterceptor, CachedVerifier, Principal, current_principal, remote_verifier
from donut_common.errors import DonutError
from gateway.links import LinkSigner

SERVICE_NAME = cellar_pb2.DESCRIPTOR.services_by_name["Cellar"].full_name  # donut.cellar.v1.Cellar
STOP_GRACE_SECONDS = 5.0

log = logging.getLogger(__name__)


def registration(
    storage: Storage, *, max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    principal: Callable[[], Principal] = current_principal,
    quota_bytes: int | None = None, links: LinkSigner | None = None,
) -> rpc.Registration:
    """(add_fn, servicer, full service name) for `donut_common.rpc.create_server`."""
    servicer = CellarServicer(storage, max_file_size=max_file_size, principal=principal, quota_bytes=quota_bytes,
                              links=links)
    return cellar_pb2_grpc.add_CellarServicer_to_server, servicer, SERVICE_NAME


def create_server(
    address: str, storage: Storage, *, max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    principal: Callable[[], Principal] = current_principal,
    interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = (),
    tls: tuple[bytes, bytes] | None = None,
    quota_bytes: int | None = None, links: LinkSigner | None = None,
) -> tuple[grpc.Server, int]:
    """A cellar-only server, not yet started, and its bound port (useful with port 0)."""
    return rpc.create_server(address, [registration(storage, max_file_size=max_file_size, principal=principal,
                                                    quota_bytes=quota_bytes, links=links)],
                             interceptors=interceptors, tls=tls)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cellar_svc.server", description="Serve the donut cellar over gRPC."
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:7002", help="host:port (default: %(default)s)"
    )
    parser.add_argument("--root", help="directory the files are kept in (with --storage local)")
    parser.add_argument("--storage", choices=BACKENDS, default="local",
                        help="local files under --root, or an S3 bucket (credentials from the environment only: "
                             "DONUT_S3_ACCESS_KEY / DONUT_S3_SECRET_KEY, else AWS_ACCESS_KEY_ID / "
                             "AWS_SECRET_ACCESS_KEY) (default: %(default)s)")
    parser.add_argument("--s3-endpoint", default="", help="http(s)://host:port of the S3 server")
    parser.add_argument("--s3-bucket", default="", help="bucket the files are kept in; made if missing")
    parser.add_argument("--s3-region", default="", help="the bucket's region (default us-east-1)")
    parser.add_argument("--s3-prefix", default="", help="key prefix of everything stored in the bucket")
    parser.add_argument("--sweep-interval", type=float, default=SweepSettings.interval,
                        help="seconds between removals of what unfinished uploads left behind (default: %(default)s)")
    parser.add_argument(
        "--max-file-size",
        type=int,
        default=DEFAULT_MAX_FILE_SIZE,
        help="largest accepted upload, in bytes (default: %(default)s)",
    )
    parser.add_argument("--quota-bytes", type=int, help="most bytes one user's files may hold together "
                        "(default: no quota; services and admins are never limited)")
    parser.add_argument("--url-signing-key-file", default=os.environ.get("DONUT_URL_SIGNING_KEY_FILE", ""),
                        help="file holding the key download links are signed with, shared with the gateway "
                             "that serves them [env DONUT_URL_SIGNING_KEY_FILE]")
    parser.add_argument("--public-url", default=os.environ.get("DONUT_PUBLIC_URL", ""),
                        help="base URL of that gateway, e.g. https://donut.example.org [env DONUT_PUBLIC_URL]")
    parser.add_argument("--users-endpoint", default=os.environ.get("DONUT_USERS_ENDPOINT", ""),
                        help="host:port of users_svc, which verifies callers' tokens [env DONUT_USERS_ENDPOINT]")
    parser.add_argument("--service-token-file", default=os.environ.get("DONUT_SERVICE_TOKEN_FILE", ""),
                        help="file holding this service's own token [env DONUT_SERVICE_TOKEN_FILE]")
    parser.add_argument("--tls-cert", help="server certificate (PEM); with --tls-key, gRPC speaks only TLS")
    parser.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
    parser.add_argument("--tls-ca", default=os.environ.get("DONUT_TLS_CA", ""),
                        help="CA certificate (PEM) to reach users_svc over TLS [env DONUT_TLS_CA]")
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests' progress")
    args = parser.parse_args(argv)
    if not args.users_endpoint or not args.service_token_file:
        parser.error("--users-endpoint and --service-token-file are required: every call is authenticated")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if bool(args.url_signing_key_file) != bool(args.public_url):
        parser.error("--url-signing-key-file and --public-url go together")
    if args.quota_bytes is not None and args.quota_bytes < 0:
        parser.error(f"--quota-bytes: must not be negative (got {args.quota_bytes})")
    if args.storage == "local" and not args.root:
        parser.error("--root is required with --storage local")
    if args.storage == "s3" and args.root:
        parser.error("--root: only with --storage local")
    if not args.sweep_interval > 0:
        parser.error("--sweep-interval: must be more than 0 seconds")
    try:
        s3 = s3_settings(args.storage, args.s3_endpoint, args.s3_bucket, args.s3_region, args.s3_prefix)
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    try:
        with open(args.service_token_file, encoding="utf-8") as f:
            service_token = f.read().strip()
        ca = _read(args.tls_ca) if args.tls_ca else None
        tls = (_read(args.tls_cert), _read(args.tls_key)) if args.tls_cert else None
        links = None
        if args.url_signing_key_file:
            public_url = args.public_url
            links = LinkSigner(_read(args.url_signing_key_file).strip(), lambda: public_url)
        verifier = CachedVerifier(remote_verifier(rpc.channel(args.users_endpoint, token=service_token, tls_ca=ca)))
        storage = open_storage(s3, args.root)
        server, port = create_server(
            args.listen, storage, max_file_size=args.max_file_size,
            interceptors=[AuthInterceptor(verifier)], tls=tls, quota_bytes=args.quota_bytes, links=links,
        )
    except (OSError, RuntimeError, DonutError) as e:
        print(f"cellar: cannot start: {e}", file=sys.stderr)
        return 1

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    sweeper = start_sweeper(storage, SweepSettings(interval=args.sweep_interval), stop)
    log.info("cellar serving on port %d, storage %s", port, s3.endpoint if s3 else args.root)
    while not stop.wait(timeout=1.0):
        pass
    log.info("cellar stopping")
    server.stop(STOP_GRACE_SECONDS).wait()
    sweeper.join()
    return 0


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


if __name__ == "__main__":
    sys.exit(main())
