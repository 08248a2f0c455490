"""What every donut-dagger service shares: domain errors, gRPC server bootstrap and error
translation, client configuration, and running an etcd server."""
