"""The users domain: users, tokens, verification, and who may do what with them.

Tokens look like `dd_<id>_<secret>`: the id (public, 64 bits) finds the record, the secret
(256 random bits) is checked against its stored SHA-256 with a constant-time compare.
Guessing is hopeless by construction; a high-entropy secret needs no slow hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from donut_common import names
from donut_common.auth import (
    MAX_TOKEN_LIFETIME,
    SCOPE_ADMIN,
    SCOPE_SERVICE,
    SCOPE_USER,
    TOKEN_PREFIX,
    Principal,
    split_token,
)
from donut_common.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Problem,
    Unauthenticated,
)
from users_svc.store import SignInCodeRecord, TokenRecord, UserRecord, UserStore

LAST_USED_EVERY = 60.0  # seconds between two writes of a token's last-used time
FORGET_AFTER = 86400.0  # seconds a revoked or expired token is still kept (and listed), then deleted
MAX_MAKERS = 16  # tokens in the chain that made a token (checked at each verification, in one read)
FORGET_PER_MINT = 8     # ended tokens deleted by each new one: the sweep keeps pace with job tokens
SIGN_IN_CODE_LIFETIME = 60.0  # seconds a web sign-in code works
SIGN_IN_CODE_KEPT = 90  # seconds etcd keeps a code nobody spent (its lease), a little past its lifetime
SIGN_IN_PATH = "/login/code"  # the web GUI's page that spends a sign-in code
LOGIN_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-_.]{0,62}$")
_SCOPE_PATTERN = re.compile(
    f"user|admin|service|job:{names.WORKFLOW_ID}/{names.JOB_NAME}/[1-9][0-9]{{0,8}}|cache:{names.UPLOAD_ID}")


@dataclass(frozen=True)
class NewToken:
    record: TokenRecord
    secret: str  # shown once


@dataclass(frozen=True)
class NewSignInCode:
    code: str  # shown once
    expires_at: float
    url: str  # the GUI's page spending it; "" when the GUI's address is unknown


def _ended(token: TokenRecord | None, now: float) -> bool:
    """Revoked, expired, or gone (forgotten a while after it ended)."""
    ends_at = None if token is None else token.ends_at
    return token is None or (ends_at is not None and ends_at <= now)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class UsersService:
    def __init__(self, store: UserStore, clock: Callable[[], float] = time.time,
                 gui_url: Callable[[], str] = lambda: "") -> None:
        self.store = store
        self.clock = clock
        self.gui_url = gui_url
        """The web GUI's base URL, read when a sign-in code is made ("" while unknown)."""

    # ---- verification --------------------------------------------------------------

    def verify(self, token: str) -> Principal:
        token_id, secret = split_token(token)
        if not token_id:
            raise Unauthenticated("not a donut token")
        try:
            record, revision = self.store.token_and_revision(token_id)
        except NotFound:
            raise Unauthenticated("unknown token") from None
        if not hmac.compare_digest(record.secret_hash, _hash(secret)):
            raise Unauthenticated("unknown token")
        now = self.clock()
        if record.revoked:
            raise Unauthenticated("the token was revoked")
        if record.expires_at is not None and record.expires_at <= now:
            raise Unauthenticated("the token has expired")
        if record.makers:
            makers = self.store.tokens_by_id(list(record.makers))
            if any(_ended(makers.get(m), now) for m in record.makers):
                raise Unauthenticated("the token that made it (or one before) was revoked or has expired")
        user = self.store.user(record.user_id)
        if record.last_used_at is None or now - record.last_used_at > LAST_USED_EVERY:
            self.store.save_token(record.with_(last_used_at=now), revision)  # skipped if it changed meanwhile
        return Principal(user_id=user.id, login=user.login, admin=user.admin, token_id=record.id,
                         scopes=record.scopes, expires_at=record.expires_at)

    # ---- users ---------------------------------------------------------------------

    def create_user(self, caller: Principal, login: str, display_name: str = "", admin: bool = False) -> UserRecord:
        caller.require_admin()
        return self._new_user(login, display_name, admin)

    def _new_user(self, login: str, display_name: str = "", admin: bool = False, github_id: int = 0) -> UserRecord:
        if not LOGIN_PATTERN.match(login):
            raise InvalidArgument([Problem("login", "must be 1-63 letters, digits, '-', '_' or '.'")])
        user = UserRecord(id=str(uuid.uuid4()), login=login, display_name=display_name or login,
                          github_id=github_id, admin=admin, created_at=self.clock())
        self.store.create_user(user)
        return user

    def upsert_github_user(self, caller: Principal, github_id: int, login: str, display_name: str) -> UserRecord:
        if not (caller.is_service or caller.is_admin):
            raise PermissionDenied("only the gateway (service credentials) or an admin may register GitHub users")
        if github_id <= 0:
            raise InvalidArgument([Problem("github_id", "must be a positive GitHub user id")])
        existing = self.store.user_id_by_github(github_id)
        if existing is None:
            return self._new_user(login, display_name, github_id=github_id)
        user = self.store.user(existing)
        updated = UserRecord(**{**user.__dict__, "display_name": display_name or user.display_name})
        self.store.save_user(updated)
        return updated

    def get_user(self, caller: Principal, user_id: str = "", login: str = "") -> UserRecord:
        caller.require_user()
        if not (user_id or login):
            raise InvalidArgument([Problem("id", "an id or a login is required")])
        if not caller.is_admin and (user_id or login) not in (caller.user_id, caller.login):
            raise PermissionDenied("you may only look yourself up")  # whether the user exists or not
        return self.store.user(user_id or self.store.user_id_by_login(login))

    def list_users(self, caller: Principal) -> list[UserRecord]:
        caller.require_admin()
        return self.store.users()

    # ---- tokens --------------------------------------------------------------------

    def create_token(self, caller: Principal, name: str = "", user_login: str = "", user_id: str = "",
                     scopes: tuple[str, ...] = (), expires_in: float = 0) -> NewToken:
        scopes = tuple(scopes) or (SCOPE_USER,)
        problems = [Problem("scopes", f"unknown scope {s!r}") for s in scopes if not _SCOPE_PATTERN.fullmatch(s)]
        if not 0 <= expires_in <= MAX_TOKEN_LIFETIME:
            problems.append(Problem("expires_in_seconds",
                                    f"must be from 0 (never) to {MAX_TOKEN_LIFETIME} (100 years)"))
        if len(name) > 100:
            problems.append(Problem("name", "must be at most 100 characters"))
        if problems:
            raise InvalidArgument(problems)
        # who may, first: whether the user named exists is told to admins and services only
        job_only = all(s.startswith(("job:", "cache:")) for s in scopes)
        if job_only:
            if not (caller.is_service or caller.is_admin):
                raise PermissionDenied("job tokens are minted by the scheduler (service credentials)")
        elif caller.is_service and not caller.acts_as_user:  # the gateway opens a web session for a user
            if not (user_id or user_login):
                raise InvalidArgument([Problem("user_id", "services name the user the token is for")])
        elif not caller.is_admin:
            caller.require_user()
            if (user_id or caller.user_id) != caller.user_id or (user_login or caller.login) != caller.login:
                raise PermissionDenied("you may only create tokens for yourself")
            if not set(scopes) <= set(caller.scopes):
                raise PermissionDenied("a token cannot create a token with more rights than its own")
        target = self.store.user(user_id or (self.store.user_id_by_login(user_login) if user_login
                                             else caller.user_id))
        if SCOPE_ADMIN in scopes and not target.admin:
            raise PermissionDenied(f"{target.login} is not an admin")
        if SCOPE_SERVICE in scopes and not caller.is_admin:
            raise PermissionDenied("only admins may create service tokens")
        if job_only or not caller.token_id:  # an attempt's token lives by its attempt, not by the scheduler's
            return self.mint(target, name, scopes, expires_in)
        maker = self.store.token(caller.token_id)
        if len(maker.makers) >= MAX_MAKERS:
            raise FailedPrecondition(f"this token was made by a chain of {MAX_MAKERS} tokens: "
                                     "make new ones with a token made by fewer")
        if maker.expires_at is not None:
            left = maker.expires_at - self.clock()
            expires_in = min(expires_in or left, left)
        return self.mint(target, name, scopes, expires_in, makers=(*maker.makers, maker.id))

    def list_tokens(self, caller: Principal, user_login: str = "") -> list[TokenRecord]:
        caller.require_user()
        if user_login and user_login != caller.login:
            caller.require_admin()  # before looking the login up: it says nothing of who exists
        target = self.store.user_id_by_login(user_login) if user_login else caller.user_id
        return self.store.tokens(target)

    def revoke_token(self, caller: Principal, token_id: str) -> TokenRecord:
        if not caller.is_service:
            caller.require_user()
        while True:  # again if the record changed under us (its last use was recorded)
            try:
                record, revision = self.store.token_and_revision(token_id)
            except NotFound:
                raise NotFound(f"no token {token_id}") from None
            if not (caller.is_admin or (caller.acts_as_user and record.user_id == caller.user_id)
                    or (caller.is_service and all(s.startswith(("job:", "cache:")) for s in record.scopes))):
                raise NotFound(f"no token {token_id}")  # someone else's: as if there were none
            revoked = record if record.revoked else record.with_(revoked=True, revoked_at=self.clock())
            if self.store.save_token(revoked, revision):
                return revoked

    # ---- web sign-in codes ------------------------------------------------------------

    def create_sign_in_code(self, caller: Principal) -> NewSignInCode:
        """A one-time code signing the caller's own user in to the web GUI (`donut ui`)."""
        if caller.is_service:
            raise PermissionDenied("sign-in codes are for users' own tokens, not services' or jobs'")
        caller.require_user()
        code = secrets.token_urlsafe(32)
        expires_at = self.clock() + SIGN_IN_CODE_LIFETIME
        self.store.save_sign_in_code(_hash(code), SignInCodeRecord(caller.user_id, expires_at), SIGN_IN_CODE_KEPT)
        base = self.gui_url().rstrip("/")
        url = f"{base}{SIGN_IN_PATH}?code={urllib.parse.quote(code, safe='')}" if base else ""
        return NewSignInCode(code, expires_at, url)

    def redeem_sign_in_code(self, caller: Principal, code: str) -> UserRecord:
        """Spends a sign-in code (once, however many try at once): its user."""
        if not caller.is_service:
            raise PermissionDenied("only services (the gateway) redeem sign-in codes")
        gone = NotFound("sign-in code unknown, used or expired")
        try:
            record = self.store.spend_sign_in_code(_hash(code))
        except NotFound:
            raise gone from None
        if record.expires_at <= self.clock():
            raise gone
        return self.store.user(record.user_id)

    # ---- first start ---------------------------------------------------------------

    def ensure_user(self, login: str, admin: bool) -> UserRecord:
        """The user with this login, created if missing (start-up of the stack)."""
        try:
            return self.store.user(self.store.user_id_by_login(login))
        except NotFound:
            try:
                return self._new_user(login, admin=admin)
            except Conflict:
                return self.store.user(self.store.user_id_by_login(login))

    def mint(self, user: UserRecord, name: str, scopes: tuple[str, ...], expires_in: float = 0,
             makers: tuple[str, ...] = ()) -> NewToken:
        """Issues a token, unchecked: callers have checked who may have it (create_token),
        or it is the stack's own (the first admin token, service credentials). It works
        only while every token of `makers` does."""
        now = self.clock()
        self.store.forget_ended(now - FORGET_AFTER, FORGET_PER_MINT)  # a little of it each time: bounded work
        secret = secrets.token_urlsafe(32)
        record = TokenRecord(id=secrets.token_hex(8), user_id=user.id, name=name, secret_hash=_hash(secret),
                             scopes=scopes, created_at=now, expires_at=now + expires_in if expires_in else None,
                             makers=makers)
        self.store.save_token(record)
        return NewToken(record, f"{TOKEN_PREFIX}{record.id}_{secret}")
