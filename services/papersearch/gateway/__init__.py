"""The gRPC gateway: grpc.aio servicers, auth, health and reflection in front of the pipeline."""
