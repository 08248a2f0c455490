"""Regenerates the Python gRPC code under donut/ from the .proto files under proto/.

Run `python proto/generate.py`; CI runs it and fails when the committed output differs.
"""

from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def main() -> int:
    protos = sorted(PROTO_DIR.glob("donut/*/v1/*.proto"))
    for old in ROOT.glob("donut/*/v1/*"):
        if old.name.endswith(GENERATED_SUFFIXES):
            old.unlink()
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        return 1
    for proto in protos:
        package = ROOT / proto.parent.relative_to(PROTO_DIR)
        while package != ROOT:
            (package / "__init__.py").touch()
            package = package.parent
    return 0


if __name__ == "__main__":
    sys.exit(main())
