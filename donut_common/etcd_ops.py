"""The pieces of an etcd transaction that every service's store builds, and sending one
with its failure as a domain error."""

from __future__ import annotations

from typing import Any

import grpc
from pyetcd import etcdrpc

from donut_common.errors import Unavailable


def put(key: str, value: str | bytes, lease: int = 0) -> Any:
    data = value.encode() if isinstance(value, str) else value
    return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key.encode(), value=data, lease=lease))


def get(key: str) -> Any:
    return etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key.encode()))


def get_prefix(prefix: str) -> Any:
    start = prefix.encode()
    end = start[:-1] + bytes([start[-1] + 1])
    return etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=start, range_end=end))


def delete(key: str) -> Any:
    return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=key.encode()))


def absent(key: str) -> Any:
    """The key does not exist."""
    return etcdrpc.Compare(key=key.encode(), target=etcdrpc.Compare.CREATE, result=etcdrpc.Compare.EQUAL,
                           create_revision=0)


def mod_equals(key: str, revision: int) -> Any:
    """The key was last changed at `revision` (0: it does not exist)."""
    return etcdrpc.Compare(key=key.encode(), target=etcdrpc.Compare.MOD, result=etcdrpc.Compare.EQUAL,
                           mod_revision=revision)


def value_equals(key: str, value: bytes) -> Any:
    return etcdrpc.Compare(key=key.encode(), target=etcdrpc.Compare.VALUE, result=etcdrpc.Compare.EQUAL,
                           value=value)


def txn(client: Any, compare: list[Any], success: list[Any]) -> Any:
    """Sends the transaction; its response (`succeeded`, `responses`, `header.revision`)."""
    try:
        return client.kvstub.Txn(etcdrpc.TxnRequest(compare=compare, success=success), client.timeout)
    except grpc.RpcError as e:
        raise Unavailable(f"etcd transaction failed: {e.details()}") from e
