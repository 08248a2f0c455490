"""How fast files move through cellar, against moving them without it, and what cellar's
process holds in memory meanwhile.

S3: starts s3rver (installed by `make test` or `make bench`) and `donut up --storage s3` on it in a
separate process, then uploads a file through cellar (gRPC Put) and downloads it (gRPC Get),
and, in the same run on the same s3rver, does the same with the minio SDK's own
`fput_object` / `fget_object`. Local: `donut up` with local storage against two
`shutil.copyfile`s of the same file (in, then out), and against the same with an fsync of
the copy (cellar fsyncs an upload before it answers). For each, the peak RSS (VmHWM in
/proc/<pid>/status, reset through /proc/<pid>/clear_refs before each transfer where the
kernel allows it) of the `donut up` process, which serves cellar.

Prints, asserts nothing (targets: cellar >= 70% of direct; RSS < 150 MB).

    python bench/cellar.py [--s3-mib 256] [--local-mib 1024]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
S3RVER = ROOT / ".node" / "node_modules" / ".bin" / "s3rver"
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} did not happen within {timeout} s")
        time.sleep(0.05)


def make_file(path: Path, mib: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for i in range(mib):
            chunk = block[i % 7 :] + block[: i % 7]  # not all alike
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def s3rver(work: Path) -> Iterator[str]:
    if not S3RVER.exists():
        raise SystemExit(f"bench: {S3RVER} is missing: run `make bench` (it installs it)")
    port = free_port()
    command = [str(S3RVER), "-d", str(work / "s3rver"), "-a", "127.0.0.1", "-p", str(port), "--silent"]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(listening, "s3rver listening")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def donut_up(work: Path, name: str, *options: str, env: dict[str, str] | None = None) -> Iterator[tuple[int, str, str]]:
    """`donut up` in its own process: (its pid, its endpoint, an admin token)."""
    from donut_common.config import ClientConfig

    home, port = work / f"home-{name}", free_port()
    log = work / f"up-{name}.log"
    environment = {**os.environ, "DONUT_HOME": str(home), **(env or {})}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "donut_cli", "up", "--data-dir", str(work / f"data-{name}"),
                                    "--port", str(port), "--http-port", "-1", *options],
                                   env=environment, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        wait_for(lambda: b"client config written" in log.read_bytes() or process.poll() is not None, "donut up")
        if process.poll() is not None:
            raise SystemExit(f"bench: donut up failed: {log.read_text()}")
        os.environ["DONUT_HOME"] = str(home)
        yield process.pid, f"127.0.0.1:{port}", ClientConfig.load().token
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The process's peak (VmHWM) or current (VmRSS) resident set, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def through_cellar(work: Path, name: str, source: Path, expected: str, *options: str,
                   env: dict[str, str] | None = None) -> tuple[float, float, float, float, float, bool]:
    """(upload s, download s, RSS MB before, peak RSS MB while uploading, while downloading,
    whether the peak could be reset)."""
    from donut_common.rpc import channel
    from streamed_job.cellar import CellarClient

    destination = work / f"got-{name}"
    with donut_up(work, name, *options, env=env) as (pid, endpoint, token), \
            channel(endpoint, token=token) as ch:
        cellar = CellarClient(ch)
        idle = rss_mb(pid, "VmRSS")
        reset = reset_peak(pid)
        up = timed(lambda: cellar.put("cache", "bench", "file.bin", source))
        up_rss = rss_mb(pid)
        reset_peak(pid)
        down = timed(lambda: cellar.get("cache", "bench", "file.bin", destination))
        down_rss = rss_mb(pid)
    assert sha256_of(destination) == expected, "cellar returned other bytes"
    destination.unlink()
    return up, down, idle, up_rss, down_rss, reset


def durable_copy(source: Path, target: Path) -> None:
    """A copy on disk before it returns, as cellar keeps an upload (copyfile alone may
    leave it in the page cache)."""
    shutil.copyfile(source, target)
    with open(target, "rb") as f:
        os.fsync(f.fileno())


def report(title: str, mib: int, cellar: tuple[float, float, float, float, float, bool],
           direct: tuple[float, float], direct_name: str) -> None:
    up, down, idle, up_rss, down_rss, reset = cellar
    print(f"{title} ({mib} MiB):")
    for label, ours, theirs in (("upload", up, direct[0]), ("download", down, direct[1])):
        print(f"  {label:8}  cellar {mib / ours:7.1f} MB/s   {direct_name} {mib / theirs:7.1f} MB/s   "
              f"cellar/direct {theirs / ours:5.0%}")
    since = "during the transfer" if reset else "since start (clear_refs refused)"
    print(f"  RSS of the cellar process (donut up): {idle:.0f} MB before; peak {since}: upload {up_rss:.0f} MB, "
          f"download {down_rss:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--s3-mib", type=int, default=256, help="file size through S3 (default: %(default)s)")
    parser.add_argument("--local-mib", type=int, default=1024, help="file size on local disk (default: %(default)s)")
    args = parser.parse_args()
    from minio import Minio

    with tempfile.TemporaryDirectory(prefix="bench-cellar-") as tmp:
        work = Path(tmp)
        with s3rver(work) as endpoint:
            source = work / "s3-source.bin"
            expected = make_file(source, args.s3_mib)
            client = Minio(endpoint.removeprefix("http://"), "S3RVER", "S3RVER", secure=False, region="us-east-1")
            client.make_bucket("direct")
            direct_up = timed(lambda: client.fput_object("direct", "file.bin", str(source)))
            direct_down = timed(lambda: client.fget_object("direct", "file.bin", str(work / "direct.bin")))
            assert sha256_of(work / "direct.bin") == expected
            (work / "direct.bin").unlink()
            credentials = {"DONUT_S3_ACCESS_KEY": "S3RVER", "DONUT_S3_SECRET_KEY": "S3RVER"}
            cellar = through_cellar(work, "s3", source, expected, "--storage", "s3", "--s3-endpoint", endpoint,
                                    "--s3-bucket", "cellar", env=credentials)
            report("S3 on s3rver", args.s3_mib, cellar, (direct_up, direct_down), "minio SDK")
            source.unlink()

        source = work / "local-source.bin"
        expected = make_file(source, args.local_mib)
        copy_in = timed(lambda: shutil.copyfile(source, work / "copy-in.bin"))
        copy_out = timed(lambda: shutil.copyfile(work / "copy-in.bin", work / "copy-out.bin"))
        for name in ("copy-in.bin", "copy-out.bin"):
            (work / name).unlink()
        synced_in = timed(lambda: durable_copy(source, work / "copy-in.bin"))
        synced_out = timed(lambda: durable_copy(work / "copy-in.bin", work / "copy-out.bin"))
        for name in ("copy-in.bin", "copy-out.bin"):
            (work / name).unlink()
        cellar = through_cellar(work, "local", source, expected)
        report("local disk", args.local_mib, cellar, (copy_in, copy_out), "copyfile")
        up, down = cellar[:2]
        print(f"  with fsync, as cellar stores an upload: copyfile+fsync {args.local_mib / synced_in:7.1f} MB/s in "
              f"(cellar/direct {synced_in / up:.0%}), {args.local_mib / synced_out:7.1f} MB/s out "
              f"(cellar/direct {synced_out / down:.0%})")


if __name__ == "__main__":
    main()
