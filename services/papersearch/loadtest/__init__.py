"""An open-loop asyncio gRPC load generator: profile -> schedule -> run -> per-second stats,
Serve replica counts and Prometheus deltas -> JSON, PNG and a one-screen summary."""
