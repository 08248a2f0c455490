"""The Users gRPC servicer: protobuf in, domain calls with the caller, protobuf out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from donut.users.v1 import users_pb2 as pb
from donut.users.v1 import users_pb2_grpc
from donut_common.auth import Principal, current_principal
from donut_common.errors import PermissionDenied
from donut_common.rpc import translate_errors
from donut_common.version import donut_version
from streamed_job.timestamps import timestamp
from users_svc.service import UsersService
from users_svc.store import TokenRecord, UserRecord

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Users"].full_name


def user_pb(user: UserRecord) -> pb.User:
    return pb.User(id=user.id, login=user.login, github_id=user.github_id, display_name=user.display_name,
                   admin=user.admin, created_at=timestamp(user.created_at))


def token_pb(token: TokenRecord) -> pb.Token:
    return pb.Token(id=token.id, user_id=token.user_id, name=token.name, scopes=list(token.scopes),
                    revoked=token.revoked, created_at=timestamp(token.created_at),
                    expires_at=timestamp(token.expires_at), last_used_at=timestamp(token.last_used_at))


@translate_errors
class UsersServicer(users_pb2_grpc.UsersServicer):
    def __init__(self, service: UsersService, principal: Callable[[], Principal] = current_principal) -> None:
        self.service = service
        self.principal = principal

    def _principal_pb(self, principal: Principal) -> pb.Principal:
        user = self.service.store.user(principal.user_id)
        token = self.service.store.token(principal.token_id) if principal.token_id else None
        return pb.Principal(user=user_pb(user), token=token_pb(token) if token else None)

    def VerifyToken(self, request: pb.VerifyTokenRequest, context: grpc.ServicerContext) -> pb.Principal:
        caller = self.principal()
        if not (caller.is_service or caller.is_admin):
            raise PermissionDenied("only services verify tokens")
        return self._principal_pb(self.service.verify(request.token))

    def WhoAmI(self, request: pb.WhoAmIRequest, context: grpc.ServicerContext) -> pb.Principal:
        me = self._principal_pb(self.principal())
        me.server_version = donut_version()
        return me

    def GetUser(self, request: pb.GetUserRequest, context: grpc.ServicerContext) -> pb.User:
        return user_pb(self.service.get_user(self.principal(), request.id, request.login))

    def UpsertGithubUser(self, request: pb.UpsertGithubUserRequest, context: grpc.ServicerContext) -> pb.User:
        return user_pb(self.service.upsert_github_user(self.principal(), request.github_id, request.login,
                                                       request.display_name))

    def CreateUser(self, request: pb.CreateUserRequest, context: grpc.ServicerContext) -> pb.User:
        return user_pb(self.service.create_user(self.principal(), request.login, request.display_name,
                                                request.admin))

    def ListUsers(self, request: pb.ListUsersRequest, context: grpc.ServicerContext) -> pb.ListUsersResponse:
        return pb.ListUsersResponse(users=[user_pb(u) for u in self.service.list_users(self.principal())])

    def CreateToken(self, request: pb.CreateTokenRequest, context: grpc.ServicerContext) -> pb.CreateTokenResponse:
        new = self.service.create_token(self.principal(), request.name, request.user_login, request.user_id,
                                        tuple(request.scopes), request.expires_in_seconds)
        return pb.CreateTokenResponse(token=token_pb(new.record), secret=new.secret)

    def ListTokens(self, request: pb.ListTokensRequest, context: grpc.ServicerContext) -> pb.ListTokensResponse:
        return pb.ListTokensResponse(tokens=[token_pb(t) for t in
                                             self.service.list_tokens(self.principal(), request.user_login)])

    def RevokeToken(self, request: pb.RevokeTokenRequest, context: grpc.ServicerContext) -> pb.Token:
        return token_pb(self.service.revoke_token(self.principal(), request.id))

    def CreateSignInCode(self, request: pb.CreateSignInCodeRequest, context: grpc.ServicerContext) -> pb.SignInCode:
        new = self.service.create_sign_in_code(self.principal())
        return pb.SignInCode(code=new.code, expires_at=timestamp(new.expires_at), url=new.url)

    def RedeemSignInCode(self, request: pb.RedeemSignInCodeRequest, context: grpc.ServicerContext) -> pb.User:
        return user_pb(self.service.redeem_sign_in_code(self.principal(), request.code))


def registration(service: UsersService, principal: Callable[[], Principal] = current_principal) -> tuple[Any, Any, str]:
    return users_pb2_grpc.add_UsersServicer_to_server, UsersServicer(service, principal), SERVICE_NAME
