"""The gateway as a Serve deployment: its replica runs the grpc.aio server on the replica's
event loop, reaches the model deployments through handles and queries the index itself
(pipeline/index_access.py). One replica per node (the port); with the embedded engine, the one
replica owns the shard."""

from __future__ import annotations

import asyncio

from ray import serve
from ray.serve.handle import DeploymentHandle

from papersearch.api import convert
from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.gateway.server import Gateway
from papersearch.logs import configure_logging
from papersearch.models.manifest import model_dir, read_manifest
from papersearch.pipeline.index_access import IndexAccess
from papersearch.pipeline.serve_backend import HandleBackend
from papersearch.retriever.opener import CollectionOpener
from papersearch.settings import Settings


@serve.deployment(name="Gateway")
class GatewayDeployment:
    def __init__(
        self,
        settings: Settings,
        encoder: DeploymentHandle,
        reranker: DeploymentHandle,
    ) -> None:
        configure_logging(settings.log_level, settings.log_format)
        embedder = read_manifest(model_dir(settings.models.repository,
                                           settings.models.embedder_name))
        self.index = IndexAccess(CollectionOpener(settings, embedder.dim or 0, embedder.sha256))
        self.gateway = Gateway(HandleBackend(encoder, reranker, self.index, settings), settings)
        self._started = asyncio.get_running_loop().create_task(self.gateway.start())

    async def Search(self, request: pb.SearchRequest) -> pb.SearchResponse:  # noqa: N802
        """The same search for Serve's built-in gRPC proxy, when a config enables it: only
        benchmarks/serving.py does, to compare the two front ends (README, Architecture)."""
        servicer = self.gateway.search
        query = convert.search_query_from_proto(request, servicer.settings.search)
        return convert.search_response_to_proto(await servicer.pipeline.search(query))

    async def drain(self) -> None:
        """Drain this replica's gateway (gateway/server.py): `papersearch serve` calls it on
        SIGTERM before taking Ray down; returns when the calls in flight have finished."""
        await self.gateway.drain()

    async def check_health(self) -> None:
        """Serve restarts the replica if the server failed to start (e.g. port taken)."""
        if self._started.done() and self._started.exception() is not None:
            raise RuntimeError(f"gRPC gateway failed: {self._started.exception()}")

    async def __del__(self) -> None:
        """Serve stopping this replica: drain (within graceful_shutdown_timeout_s), then close
        the index (the embedded shard is flushed)."""
        await self.gateway.drain()
        await self.index.close()
