"""Regenerates the Python gRPC code (donut.<service>.v1) next to the .proto files under
proto/. The `streamed-job` distribution ships it (streamed_job/src/donut links here).

Run `make protos` (this script, in a virtualenv with proto/requirements.txt); CI runs it
and fails when the committed output differs.
"""

from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc

PROTO_DIR = pathlib.Path(__file__).resolve().parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
PLUGINS = pathlib.Path(sys.executable).parent  # mypy-protobuf's protoc plugins, installed beside this Python


def main() -> int:
    protos = sorted(PROTO_DIR.glob("donut/*/v1/*.proto"))
    for old in PROTO_DIR.glob("donut/*/v1/*"):
        if old.name.endswith(GENERATED_SUFFIXES):
            old.unlink()
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={PLUGINS / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={PLUGINS / 'protoc-gen-mypy_grpc'}",
        f"--python_out={PROTO_DIR}",
        f"--grpc_python_out={PROTO_DIR}",
        f"--mypy_out={PROTO_DIR}",  # typed messages (.pyi), so callers of the stubs are checked
        f"--mypy_grpc_out={PROTO_DIR}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        return 1
    for proto in protos:  # donut/ stays a namespace package; donut/<service>/v1 are regular ones
        (proto.parent / "__init__.py").touch()
        (proto.parent.parent / "__init__.py").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
