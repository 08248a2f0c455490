"""Signed download links served by the gateway, in one place for both of their ends:
cellar signs them (for storage that has no links of its own), the gateway checks them.

A link is `<gateway>/files/<kind>/<scope>/<path>?[job=<job>&]expires=<unix seconds>&signature=<hex>`
(the job, of a job's file, in the query: the gateway need not know which kinds have jobs),
the signature an HMAC-SHA256, under a key the two share, of the file's name and the expiry.
Anyone holding the link may download the file until it expires; nothing else is needed.
Standard library only: cellar imports this module without the web framework.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

ROUTE = "/files"


def signature(key: bytes, kind: str, scope: str, job: str, path: str, expires: int) -> str:
    """The hex HMAC of a link (NUL separates the fields: no name may contain it)."""
    message = "\0".join((kind, scope, job, path, str(expires))).encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def link_problem(key: bytes, kind: str, scope: str, job: str, path: str, expires: str, given: str,
                 now: float) -> str | None:
    """Why a link may not be served (None: it may), in a few words for the refusal."""
    if not expires.isdigit() or not given:
        return "not a signed link"
    expected = signature(key, kind, scope, job, path, int(expires))
    if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
        return "bad signature"
    if int(expires) <= now:
        return "link expired"
    return None


@dataclass(frozen=True)
class LinkSigner:
    """Makes the gateway's signed links (for `cellar_svc`)."""

    key: bytes
    """The secret shared with the gateway that serves the links."""
    base_url: Callable[[], str]
    """The gateway's base URL, read when a link is made ("": no gateway is serving)."""

    def url(self, kind: str, scope: str, job: str, path: str, expires: int) -> str | None:
        """The link to the file, valid until `expires` (unix seconds); None without a gateway."""
        base = self.base_url().rstrip("/")
        if not base:
            return None
        name = "/".join(urllib.parse.quote(part, safe="") for part in (kind, scope))
        query = urllib.parse.urlencode({**({"job": job} if job else {}), "expires": expires,
                                        "signature": signature(self.key, kind, scope, job, path, expires)})
        return f"{base}{ROUTE}/{name}/{urllib.parse.quote(path, safe='/')}?{query}"
