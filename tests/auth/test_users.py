"""The users service against a real etcd: what concurrent writes may not undo."""

from __future__ import annotations

from typing import Any

import pytest

from donut_common.errors import Unauthenticated
from users_svc.service import UsersService
from users_svc.store import UserStore


def test_recording_a_token_s_use_never_undoes_its_revocation(etcd_client: Any, etcd_prefix: str) -> None:
    store = UserStore(etcd_client, etcd_prefix)
    service = UsersService(store)
    admin = service.verify(service.mint(service.ensure_user("root", admin=True), "root", ("user", "admin")).secret)
    token = service.mint(service.ensure_user("alice", admin=False), "laptop", ("user",))
    read = store.token_and_revision
    raced: list[str] = []

    def revoked_right_after_the_read(token_id: str) -> Any:
        got = read(token_id)
        if token_id == token.record.id and not raced:
            raced.append(token_id)
            service.revoke_token(admin, token_id)  # lands between verify's read and its write of the last use
        return got

    store.token_and_revision = revoked_right_after_the_read  # type: ignore[method-assign]
    service.verify(token.secret)  # the check in flight saw the token before its revocation
    store.token_and_revision = read  # type: ignore[method-assign]

    assert raced and store.token(token.record.id).revoked
    with pytest.raises(Unauthenticated):
        service.verify(token.secret)
    etcd_client.delete_prefix(etcd_prefix)


def test_a_token_lifetime_past_a_century_is_refused(etcd_client: Any, etcd_prefix: str) -> None:
    import pytest

    from donut_common.auth import Principal
    from donut_common.errors import InvalidArgument

    service = UsersService(UserStore(etcd_client, etcd_prefix))
    admin = service.ensure_user("root", admin=True)
    caller = Principal(user_id=admin.id, login="root", admin=True, scopes=("user", "admin"))
    with pytest.raises(InvalidArgument, match="expires_in_seconds"):
        service.create_token(caller, name="forever", expires_in=10**12)
    assert service.create_token(caller, name="long", expires_in=99 * 365 * 86400).record.expires_at is not None
    etcd_client.delete_prefix(etcd_prefix)


class ReadSpy:
    """The etcd client, noting the prefixes read."""

    def __init__(self, etcd: Any) -> None:
        self.etcd = etcd
        self.prefixes: list[str] = []

    def get_prefix(self, prefix: str, revision: int = 0) -> Any:
        self.prefixes.append(prefix)
        return self.etcd.get_prefix(prefix, revision)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.etcd, name)


def test_listing_tokens_reads_the_caller_s_only_old_records_included(etcd_client: Any, etcd_prefix: str) -> None:
    import json
    from dataclasses import asdict

    from donut_common.auth import Principal

    spy = ReadSpy(etcd_client)
    store = UserStore(spy, etcd_prefix)
    service = UsersService(store)
    alice, bob = service.ensure_user("alice", admin=False), service.ensure_user("bob", admin=False)
    mine = [service.mint(alice, f"a{i}", ("user",)).record.id for i in range(3)]
    service.mint(alice, "job", ("job:11111111-2222-4333-8444-555555555555/j/1",))
    for i in range(20):
        service.mint(bob, f"b{i}", ("user",))
    old = service.mint(alice, "old", ("user",)).record  # as an earlier version stored it: the record alone
    etcd_client.delete_prefix(etcd_prefix + "user-tokens/")
    etcd_client.put(f"{etcd_prefix}tokens/{old.id}", json.dumps(asdict(old)))
    store.upgrade(now=0.0)
    spy.prefixes.clear()
    caller = Principal(user_id=alice.id, login="alice")
    assert sorted(t.id for t in service.list_tokens(caller)) == sorted([*mine, old.id])
    assert spy.prefixes == [f"{etcd_prefix}user-tokens/{alice.id}/"]
    etcd_client.delete_prefix(etcd_prefix)


def test_revoked_and_expired_tokens_are_forgotten_a_day_later(etcd_client: Any, etcd_prefix: str) -> None:
    from donut_common.auth import Principal
    from donut_common.errors import NotFound
    from users_svc.service import FORGET_AFTER, FORGET_PER_MINT

    now = [1_000_000.0]
    store = UserStore(etcd_client, etcd_prefix)
    service = UsersService(store, clock=lambda: now[0])
    alice = service.ensure_user("alice", admin=False)
    caller = Principal(user_id=alice.id, login="alice")
    kept = service.mint(alice, "kept", ("user",)).record.id
    expiring = service.mint(alice, "short", ("user",), expires_in=60).record.id
    revoked = [service.mint(alice, f"r{i}", ("user",)).record.id for i in range(FORGET_PER_MINT * 2)]
    job = service.mint(alice, "job", ("job:11111111-2222-4333-8444-555555555555/j/1",)).record.id
    for token_id in [*revoked, job]:
        service.revoke_token(caller, token_id)
    now[0] += FORGET_AFTER - 1
    service.mint(alice, "trigger", ("user",))
    assert {t.id for t in service.list_tokens(caller)} >= {kept, expiring, *revoked}  # still shown for a while
    now[0] += 120
    for _ in range(3):  # each mint forgets a few
        service.mint(alice, "trigger", ("user",))
    for token_id in [expiring, *revoked, job]:
        with pytest.raises(NotFound):
            store.token(token_id)
    assert kept in {t.id for t in service.list_tokens(caller)}
    left = [kv.key for kv in etcd_client.get_prefix(etcd_prefix) if any(i in kv.key for i in [expiring, *revoked, job])]
    assert left == []
    etcd_client.delete_prefix(etcd_prefix)


def test_a_token_made_by_a_token_ends_with_it(etcd_client: Any, etcd_prefix: str) -> None:
    """Expiry capped at the maker's, revocation of any maker up the chain effective; job
    tokens (minted by the scheduler's service token) are nobody's children."""
    now = [1_000_000.0]
    service = UsersService(UserStore(etcd_client, etcd_prefix), clock=lambda: now[0])
    alice = service.ensure_user("alice", admin=False)
    root = service.mint(alice, "root", ("user",), expires_in=1000)
    child = service.create_token(service.verify(root.secret), name="forever", expires_in=0)
    assert child.record.expires_at == root.record.expires_at
    longer = service.create_token(service.verify(root.secret), name="longer", expires_in=10**6)
    assert longer.record.expires_at == root.record.expires_at
    shorter = service.create_token(service.verify(root.secret), name="shorter", expires_in=10)
    assert shorter.record.expires_at == now[0] + 10
    grandchild = service.create_token(service.verify(child.secret), name="grandchild")
    assert grandchild.record.expires_at == root.record.expires_at
    services = service.mint(service.ensure_user("donut-services", admin=False), "services", ("service",))
    job = service.create_token(service.verify(services.secret), user_id=alice.id,
                               scopes=("job:11111111-2222-4333-8444-555555555555/j/1",), expires_in=100)
    assert service.verify(grandchild.secret).login == "alice"

    service.revoke_token(service.verify(root.secret), root.record.id)
    for made in (child, longer, shorter, grandchild):
        with pytest.raises(Unauthenticated, match="made it"):
            service.verify(made.secret)
    service.store.save_token(services.record.with_(revoked=True, revoked_at=now[0]))  # (as an admin would)
    assert service.verify(job.secret).login == "alice"
    etcd_client.delete_prefix(etcd_prefix)
