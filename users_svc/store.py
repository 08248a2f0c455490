"""Users and tokens in etcd. A token is kept only as the hash of its secret.

    <prefix>users/<user id>                 UserRecord JSON
    <prefix>logins/<login>                  user id (makes logins unique)
    <prefix>github/<github id>              user id
    <prefix>tokens/<token id>               TokenRecord JSON (hash of the secret, never the secret)
    <prefix>user-tokens/<user id>/<token>   empty: the user's tokens, job tokens aside (never listed),
                                            so a listing reads its user's only
    <prefix>token-ends/<s>/<token id>       empty: the token was revoked or expires at <s> (seconds,
                                            12 digits), so ended tokens are found oldest first
    <prefix>upgrades/<name>                 present once the records of earlier versions were upgraded so
    <prefix>sign-in-codes/<sha256 of code>  SignInCodeRecord JSON, bound to a lease: a code nobody
                                            spends vanishes by itself

Index keys are written with the record, in one transaction; a record whose index is
missing (stored by an earlier version) gets it from `upgrade`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from donut_common import etcd
from donut_common.errors import Conflict, NotFound


@dataclass(frozen=True)
class UserRecord:
    id: str
    login: str
    display_name: str = ""
    github_id: int = 0
    admin: bool = False
    created_at: float = 0.0


@dataclass(frozen=True)
class TokenRecord:
    id: str
    user_id: str
    name: str
    secret_hash: str
    scopes: tuple[str, ...] = ("user",)
    created_at: float = 0.0
    expires_at: float | None = None
    last_used_at: float | None = None
    revoked: bool = False
    revoked_at: float | None = None
    makers: tuple[str, ...] = ()  # the ids of the token that made it, of the one that made that... (oldest first)

    def with_(self, **changes: Any) -> TokenRecord:
        return replace(self, **changes)

    @property
    def listed(self) -> bool:
        """Shown in its user's listing (job tokens are not)."""
        return not any(s.startswith("job:") for s in self.scopes)

    @property
    def ends_at(self) -> float | None:
        """When it stopped (or stops) working: revoked or expired; None while neither."""
        ends = [t for t in (self.expires_at, self.revoked_at if self.revoked else None) if t is not None]
        return min(ends) if ends else None


@dataclass(frozen=True)
class SignInCodeRecord:
    """A one-time web sign-in code, kept under the hash of its secret."""

    user_id: str
    expires_at: float


class UserStore:
    def __init__(self, client: etcd.Etcd, prefix: str = "/donut/") -> None:
        self._etcd = client
        self.prefix = prefix

    def _key(self, kind: str, name: str | int) -> str:
        return f"{self.prefix}{kind}/{name}"

    def _txn(self, compare: list[etcd.Compare], success: list[etcd.Op]) -> bool:
        return self._etcd.txn(compare, success).succeeded

    def _get_json(self, key: str) -> Any:
        found = self._etcd.get(key)
        return None if found is None else json.loads(found.value)

    # ---- users ---------------------------------------------------------------------

    def create_user(self, user: UserRecord) -> None:
        """Stores a new user; Conflict when the login (or GitHub id) is taken."""
        login_key = self._key("logins", user.login)
        compare = [etcd.absent(login_key)]
        success = [etcd.put(self._key("users", user.id), json.dumps(asdict(user))), etcd.put(login_key, user.id)]
        if user.github_id:
            github_key = self._key("github", user.github_id)
            compare.append(etcd.absent(github_key))
            success.append(etcd.put(github_key, user.id))
        if not self._txn(compare, success):
            raise Conflict(f"user {user.login} already exists")

    def save_user(self, user: UserRecord) -> None:
        self._etcd.put(self._key("users", user.id), json.dumps(asdict(user)))

    def user(self, user_id: str) -> UserRecord:
        doc = self._get_json(self._key("users", user_id))
        if doc is None:
            raise NotFound(f"no user {user_id}")
        return UserRecord(**doc)

    def user_id_by_login(self, login: str) -> str:
        found = self._etcd.get(self._key("logins", login))
        if found is None:
            raise NotFound(f"no user with login {login!r}")
        return found.value.decode()

    def user_id_by_github(self, github_id: int) -> str | None:
        found = self._etcd.get(self._key("github", github_id))
        return None if found is None else found.value.decode()

    def users(self) -> list[UserRecord]:
        return sorted((UserRecord(**json.loads(kv.value)) for kv in self._etcd.get_prefix(self._key("users", ""))),
                      key=lambda u: u.login)

    # ---- tokens --------------------------------------------------------------------

    def save_token(self, token: TokenRecord, revision: int | None = None) -> bool:
        """Stores the token record (and its index keys); with a revision, only if the stored
        record still has it (False if it changed meanwhile: a revocation is never overwritten
        by a stale copy, a forgotten token never stored again)."""
        key = self._key("tokens", token.id)
        writes = [etcd.put(key, json.dumps(asdict(token))), *self._token_index(token)]
        return self._txn([] if revision is None else [etcd.mod_equals(key, revision)], writes)

    def _token_index(self, token: TokenRecord) -> list[etcd.Op]:
        ops = [etcd.put(self._user_token_key(token), b"")] if token.listed else []
        if token.ends_at is not None:
            ops.append(etcd.put(self._ends_key(token.ends_at, token.id), b""))
        return ops

    def _user_token_key(self, token: TokenRecord) -> str:
        return self._key("user-tokens", f"{token.user_id}/{token.id}")

    def _ends_key(self, at: float, token_id: str) -> str:
        return self._key("token-ends", f"{_seconds(at)}/{token_id}")

    def token(self, token_id: str) -> TokenRecord:
        return self.token_and_revision(token_id)[0]

    def token_and_revision(self, token_id: str) -> tuple[TokenRecord, int]:
        found = self._etcd.get(self._key("tokens", token_id))
        if found is None:
            raise NotFound(f"no token {token_id}")
        return _token(json.loads(found.value)), found.mod_revision

    def tokens(self, user_id: str | None = None) -> list[TokenRecord]:
        """The tokens of the user (job tokens aside), or, without one, every token (a scan
        of them all: for upgrades and tests)."""
        if user_id is None:
            found = [_token(json.loads(kv.value)) for kv in self._etcd.get_prefix(self._key("tokens", ""))]
        else:
            ids = [kv.key.rsplit("/", 1)[1] for kv in self._etcd.get_prefix(self._key("user-tokens", f"{user_id}/"))]
            found = [t for t in self.tokens_by_id(ids).values() if t.user_id == user_id]
        return sorted(found, key=lambda t: t.created_at)

    def tokens_by_id(self, ids: list[str]) -> dict[str, TokenRecord]:
        """The records of those ids that have one, read together."""
        found: dict[str, TokenRecord] = {}
        for start in range(0, len(ids), _READS_PER_TXN):
            result = self._etcd.txn([], [etcd.get(self._key("tokens", i)) for i in ids[start:start + _READS_PER_TXN]])
            for kvs in result.ranges:
                for kv in kvs:
                    token = _token(json.loads(kv.value))
                    found[token.id] = token
        return found

    def forget_ended(self, before: float, limit: int) -> int:
        """Removes up to `limit` tokens (with their index keys) that ended before `before`,
        oldest first; how many index entries were swept."""
        start = self._key("token-ends", "")
        entries = self._etcd.get_range(start, start + _seconds(before), limit)
        ids = [kv.key.rsplit("/", 1)[1] for kv in entries]
        records = self.tokens_by_id(ids)
        deletes = [etcd.delete(kv.key) for kv in entries]
        for token in records.values():
            ends_at = token.ends_at
            if ends_at is not None and ends_at < before:  # (an entry is never later than its token's end)
                deletes += [etcd.delete(self._key("tokens", token.id)), etcd.delete(self._user_token_key(token))]
                deletes += [etcd.delete(self._ends_key(at, token.id)) for at in (token.expires_at, token.revoked_at)
                            if at is not None]  # its other entry too (a revoked token's expiry)
        if deletes:
            self._txn([], deletes)
        return len(entries)

    # ---- sign-in codes ------------------------------------------------------------

    def save_sign_in_code(self, code_hash: str, record: SignInCodeRecord, keep_seconds: int) -> None:
        """Stores a code's record; etcd removes it after `keep_seconds` if it is never spent."""
        lease = self._etcd.lease(keep_seconds)
        self._etcd.txn([], [etcd.put(self._key("sign-in-codes", code_hash), json.dumps(asdict(record)), lease.id)])

    def spend_sign_in_code(self, code_hash: str) -> SignInCodeRecord:
        """Removes the code's record and returns it; NotFound when there is none (never
        stored, spent already, or forgotten): of two spending it at once, one gets it."""
        key = self._key("sign-in-codes", code_hash)
        found = self._etcd.get(key)
        if found is None or not self._txn([etcd.mod_equals(key, found.mod_revision)], [etcd.delete(key)]):
            raise NotFound("no such sign-in code")
        return SignInCodeRecord(**json.loads(found.value))

    def upgrade(self, now: float) -> None:
        """Brings what earlier versions stored up to date, once per etcd: every token gets
        its index keys (and a revoked one the time of its revocation: now)."""
        done = self._key("upgrades", "token-index")
        if self._etcd.get(done) is not None:
            return
        for token in self.tokens():
            if token.revoked and token.revoked_at is None:
                self.save_token(token.with_(revoked_at=now))
            else:
                self._txn([], self._token_index(token))
        self._etcd.put(done, b"1")


_READS_PER_TXN = 100  # etcd takes at most 128 operations per transaction


def _seconds(at: float) -> str:
    """A time as a key part that sorts like the time."""
    return f"{max(0, int(at)):012d}"


def _token(doc: dict[str, Any]) -> TokenRecord:
    return TokenRecord(**{**doc, "scopes": tuple(doc["scopes"]), "makers": tuple(doc.get("makers", ()))})
