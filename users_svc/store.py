"""Users and tokens in etcd. A token is kept only as the hash of its secret.

    <prefix>users/<user id>        UserRecord JSON
    <prefix>logins/<login>         user id (makes logins unique)
    <prefix>github/<github id>     user id
    <prefix>tokens/<token id>      TokenRecord JSON (hash of the secret, never the secret)
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

    def with_(self, **changes: Any) -> TokenRecord:
        return replace(self, **changes)


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
        """Stores the token record; with a revision, only if the stored record still has it
        (False if it changed meanwhile: a revocation is never overwritten by a stale copy)."""
        key = self._key("tokens", token.id)
        if revision is None:
            self._etcd.put(key, json.dumps(asdict(token)))
            return True
        return self._txn([etcd.mod_equals(key, revision)], [etcd.put(key, json.dumps(asdict(token)))])

    def token(self, token_id: str) -> TokenRecord:
        return self.token_and_revision(token_id)[0]

    def token_and_revision(self, token_id: str) -> tuple[TokenRecord, int]:
        found = self._etcd.get(self._key("tokens", token_id))
        if found is None:
            raise NotFound(f"no token {token_id}")
        return _token(json.loads(found.value)), found.mod_revision

    def tokens(self, user_id: str | None = None) -> list[TokenRecord]:
        found = []
        for kv in self._etcd.get_prefix(self._key("tokens", "")):
            doc = json.loads(kv.value)
            if user_id is None or doc["user_id"] == user_id:
                found.append(_token(doc))
        return sorted(found, key=lambda t: t.created_at)


def _token(doc: dict[str, Any]) -> TokenRecord:
    return TokenRecord(**{**doc, "scopes": tuple(doc["scopes"])})
