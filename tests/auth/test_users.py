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
