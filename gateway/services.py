"""The gateway's way to the services: one channel, the stubs over it, and the credentials
of a request (the signed-in user's session token) or of the gateway itself (the
services' token, for what happens before anybody is signed in)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from flask import current_app, session

from donut.cellar.v1 import cellar_pb2_grpc
from donut.dagger.v1 import dagger_pb2_grpc
from donut.users.v1 import users_pb2_grpc
from streamed_job.cellar import CellarClient

Metadata = tuple[tuple[str, str], ...]
EXTENSION = "donut.services"


class Services:
    def __init__(self, endpoint: str, service_token: str, tls_ca: bytes | None) -> None:
        if tls_ca:
            self.channel = grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(root_certificates=tls_ca))
        else:
            self.channel = grpc.insecure_channel(endpoint)
        self.dagger = dagger_pb2_grpc.DaggerStub(self.channel)
        self.users = users_pb2_grpc.UsersStub(self.channel)
        self.cellar = cellar_pb2_grpc.CellarStub(self.channel)
        self.as_gateway: Metadata = bearer(service_token)

    def cellar_client(self, metadata: Metadata) -> CellarClient:
        return CellarClient(self.channel, metadata)

    def close(self) -> None:
        self.channel.close()


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def services() -> Services:
    found: Services = current_app.extensions[EXTENSION]
    return found


@dataclass(frozen=True)
class SignedIn:
    """Who the request's session belongs to (pages call the services with `metadata`)."""

    login: str
    admin: bool
    token_id: str
    metadata: Metadata


def signed_in() -> SignedIn | None:
    token = session.get("token")
    if not isinstance(token, str) or not token:
        return None
    return SignedIn(login=str(session.get("login", "")), admin=bool(session.get("admin")),
                    token_id=str(session.get("token_id", "")), metadata=bearer(token))
