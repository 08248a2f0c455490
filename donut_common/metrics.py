"""What a replica tells Prometheus: every metric of the stack, defined in this one place.

Each process serves these from its own registry (`REGISTRY`) over HTTP (`serve`);
the code that observes something imports the metric from here and updates it.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

REGISTRY = CollectorRegistry()

JOBS_FINISHED = Counter(
    "donut_jobs_finished", "Job attempts that ended, by how (succeeded, failed, dead).",
    ["status"], registry=REGISTRY)
JOB_LAUNCH_DELAY = Histogram(
    "donut_job_launch_delay_seconds", "From a job being ready to its attempt being launched.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=REGISTRY)
ETCD_TXN_SECONDS = Histogram(
    "donut_etcd_txn_seconds", "How long etcd transactions took.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=REGISTRY)
ETCD_TXN_CONFLICTS = Counter(
    "donut_etcd_txn_conflicts", "etcd transactions refused because a compare failed (another writer got there "
    "first, or the writer's claim had ended).", registry=REGISTRY)
LOG_LINES = Counter("donut_log_lines", "Job log lines stored.", registry=REGISTRY)
TAKEOVERS = Counter(
    "donut_takeovers", "Runs this replica took over from another (dead or let go) owner.", registry=REGISTRY)
GRPC_REQUESTS = Counter(
    "donut_grpc_requests", "gRPC calls served, by full method name and the status code they ended with.",
    ["method", "code"], registry=REGISTRY)


def serve(host: str, port: int) -> tuple[str, Callable[[], None]]:
    """Serves REGISTRY in Prometheus' text format over HTTP on host:port (0: any free port),
    in a thread. Returns the URL to scrape and the function that stops the server."""
    server, thread = start_http_server(port, host, registry=REGISTRY)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{server.server_port}/metrics", stop
