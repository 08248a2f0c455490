"""The cellar service: keeps the files of donut-dagger (workflow uploads, saved job results,
workflow archives) and serves them over gRPC (`donut.cellar.v1.Cellar`).

`storage` is the port and its local-directory adapter, `servicer` maps protobuf to the
domain, `server` wires them onto a gRPC server and is the process entry point.
"""
