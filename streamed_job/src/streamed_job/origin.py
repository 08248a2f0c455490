"""Downloads of `origin` inputs, bounded so that no origin server can hold a job for ever.

Left to `urlopen`, a server that trickles a byte a minute keeps a download going for ever
(its timeout is per read) and nothing can stop it from another thread. Here all of an
attempt's downloads share one deadline (`Fetching`), and a cancel or the deadline shuts
their sockets down, so a read blocked on a stalled server returns at once. Redirects are
followed only to http(s) URLs; a download over the size limit is refused (before it is
read when its length is announced); with `deny_private`, an origin whose address is not a
public one (loopback, private, link-local with the cloud metadata service, ...) is refused.
That check is made on the address actually connected to, on every redirect, so a name that
resolves elsewhere the second time (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import math
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any, BinaryIO

from streamed_job.spec import FetchSettings

STALL_SECONDS = 60.0   # the longest wait for one read or connect
DOWNLOAD_TRIES = 3
CHUNK_BYTES = 1024 * 1024


class DownloadError(Exception):
    """A download that failed; the message says why (the caller names the input)."""


class _Refused(OSError):
    """An origin at an address the settings refuse (an OSError, as urllib expects of a connect)."""


class Fetching:
    """The downloads of one attempt: their deadline, and a stop from any thread (a cancel,
    or the deadline's timer) that shuts their sockets down."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer: threading.Timer | None = None
        self._stopped = threading.Event()
        self.why = ""  # why it was stopped ("": it was not)
        self.deadline = math.inf  # time.monotonic() at which it stops
        self._expired = ""  # the why of a stop at the deadline

    def begin(self, seconds: float, why: str) -> None:
        """Stops every download, with `why`, `seconds` from now (the timer starts with the
        first connection: an attempt that downloads nothing costs no thread)."""
        self.deadline = time.monotonic() + seconds
        self._expired = why

    def end(self) -> None:
        """The downloads are over: the timer is no longer needed."""
        with self._lock:
            timer, self._timer, self._sockets = self._timer, None, []
        if timer is not None:
            timer.cancel()

    def stop(self, why: str) -> None:
        with self._lock:
            if self.why:
                return
            self.why = why
            sockets, self._sockets = self._sockets, []
        self._stopped.set()
        for sock in sockets:
            _shut(sock)

    def watch(self, sock: socket.socket) -> None:
        """`sock` is shut down when the downloads stop (at once if they have)."""
        with self._lock:
            if not self.why:
                self._sockets.append(sock)
                if self._timer is None and self.deadline < math.inf:
                    self._timer = threading.Timer(max(0.0, self.remaining()), self.stop, args=(self._expired,))
                    self._timer.daemon = True
                    self._timer.start()
                return
        _shut(sock)
        self.check()

    def forget(self) -> None:
        """The sockets watched so far are closed: no need to keep them."""
        with self._lock:
            self._sockets = []

    def check(self) -> None:
        """Raises DownloadError, saying why, once the downloads are stopped or past their deadline."""
        if not self.why and self.remaining() <= 0:
            self.stop(self._expired)
        if self.why:
            raise DownloadError(self.why)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def sleep(self, seconds: float) -> None:
        self._stopped.wait(seconds)
        self.check()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already, or not connected yet
        sock.shutdown(socket.SHUT_RDWR)


def download(url: str, out: BinaryIO, settings: FetchSettings, fetching: Fetching) -> int:
    """Writes what `url` answers into `out` (from its start) and returns its size; tries
    again after a failure that may pass (a 5xx, a dropped connection) while time remains."""
    opener = _opener(settings, fetching)
    delay = 1.0
    for attempt in range(1, DOWNLOAD_TRIES + 1):
        fetching.check()
        out.seek(0)
        out.truncate()
        try:
            return _copy(opener, url, out, settings.max_bytes, fetching)
        except urllib.error.HTTPError as e:
            fetching.check()
            if e.code < 500 or attempt == DOWNLOAD_TRIES:
                raise DownloadError(f"GET {url} answered {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            fetching.check()  # a stop shows as a dropped connection: say why it was dropped
            reason = getattr(e, "reason", e)
            if isinstance(reason, _Refused) or attempt == DOWNLOAD_TRIES:
                raise DownloadError(f"cannot download {url}: {reason}") from None
        finally:
            fetching.forget()
        fetching.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def _copy(opener: urllib.request.OpenerDirector, url: str, out: BinaryIO, limit: int, fetching: Fetching) -> int:
    too_large = f"{url} is larger than {limit} bytes (the download limit)"
    with opener.open(url, timeout=max(0.1, min(STALL_SECONDS, fetching.remaining()))) as response:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            raise DownloadError(too_large)
        copied = 0
        while True:
            chunk = response.read1(CHUNK_BYTES)  # what has arrived, not a whole chunk's wait
            fetching.check()  # a stopped download reads as a short one
            if not chunk:
                return copied
            copied += len(chunk)
            if copied > limit:
                raise DownloadError(too_large)
            out.write(chunk)


def public_address(address: str) -> bool:
    """Whether an IP address is a public one (an IPv4 address mapped into IPv6 counts as itself)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # fe80::1%eth0: the zone is no part of it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _connect(host: str, port: int, timeout: float, deny_private: bool, fetching: Fetching) -> socket.socket:
    """A socket connected to `host` at an address the settings allow (the one checked is
    the one connected to), which `fetching` can shut down."""
    refused: list[str] = []
    error: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if deny_private and not public_address(str(address[0])):
            refused.append(str(address[0]))
            continue
        sock = socket.socket(family, kind, proto)
        try:
            fetching.watch(sock)
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as e:
            sock.close()
            error = e
        except BaseException:
            sock.close()
            raise
    if error is None and refused:
        raise _Refused(f"{host} is at {', '.join(refused)}, not a public address (private origins are denied)")
    raise error or OSError(f"{host}: no address to connect to")


class _Connection(http.client.HTTPConnection):
    def __init__(self, host: str, *, fetching: Fetching, deny_private: bool, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._fetching = fetching
        self._deny_private = deny_private
        self._create_connection = self._open  # http.client's hook for making the socket

    def _open(self, address: tuple[str, int], timeout: float, source_address: object = None) -> socket.socket:
        return _connect(address[0], address[1], timeout, self._deny_private, self._fetching)

    def connect(self) -> None:
        super().connect()
        self._fetching.watch(self.sock)  # over TLS, the socket that wraps the one connected


class _TLSConnection(_Connection, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, fetching: Fetching, deny_private: bool) -> None:
        super().__init__()
        self._args = {"fetching": fetching, "deny_private": deny_private}

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_Connection, req, **self._args)  # type: ignore[arg-type]  # takes our **args too


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, fetching: Fetching, deny_private: bool) -> None:
        super().__init__()
        self._args = {"fetching": fetching, "deny_private": deny_private}

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_TLSConnection, req, context=ssl.create_default_context(),  # type: ignore[arg-type]
                            **self._args)


class _Redirects(urllib.request.HTTPRedirectHandler):
    def http_error_302(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                       headers: http.client.HTTPMessage) -> Any:
        target = headers.get("location") or headers.get("uri") or ""
        if urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, target)).scheme.lower() not in ("http", "https"):
            fp.close()
            raise DownloadError(f"{req.full_url} redirects to {target}: only http(s) URLs are followed")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(settings: FetchSettings, fetching: Fetching) -> urllib.request.OpenerDirector:
    """http(s) only: no file:, ftp: or data: handler. Proxies from the environment are used,
    unless private origins are denied (then every connection is made, and checked, here)."""
    handlers: list[urllib.request.BaseHandler] = [
        _HTTPHandler(fetching, settings.deny_private), _HTTPSHandler(fetching, settings.deny_private), _Redirects(),
        urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor(), urllib.request.UnknownHandler()]
    if not settings.deny_private:
        handlers.insert(0, urllib.request.ProxyHandler())
    opener = urllib.request.OpenerDirector()
    for handler in handlers:
        opener.add_handler(handler)
    return opener
