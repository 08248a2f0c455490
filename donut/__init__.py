"""donut-dagger's shared package: configuration, RPC plumbing, etcd helpers, the CLI,
and the generated gRPC code (donut.<service>.v1) that every part talks through."""
