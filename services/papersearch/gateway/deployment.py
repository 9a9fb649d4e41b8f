"""The gateway as a Serve deployment: its replica runs the grpc.aio server on the replica's
event loop, reaches the model deployments through handles and queries the index itself
(pipeline/index_access.py). One replica per node (the port); with the embedded engine, the one
replica owns the shard."""

from __future__ import annotations

import asyncio
import logging

from ray import serve
from ray.serve.handle import DeploymentHandle

from papersearch.api import convert
from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.errors import NotReady, Overloaded
from papersearch.gateway.server import Gateway
from papersearch.index.errors import StoreError
from papersearch.logs import configure_logging
from papersearch.models.manifest import ModelNotFound, ModelRef
from papersearch.pipeline.collections import Collections
from papersearch.pipeline.migration import MigrationFailed, MigrationRefused
from papersearch.pipeline.serve_backend import HandleBackend
from papersearch.settings import Settings

log = logging.getLogger(__name__)


@serve.deployment(name="Gateway")
class GatewayDeployment:
    def __init__(
        self,
        settings: Settings,
        encoder: DeploymentHandle,
        reranker: DeploymentHandle,
    ) -> None:
        configure_logging(settings.log_level, settings.log_format)
        self.collections = Collections(settings)
        self.backend = HandleBackend(encoder, reranker, self.collections, settings)
        self.gateway = Gateway(self.backend, settings)
        self._started = asyncio.get_running_loop().create_task(self.gateway.start())

    async def Search(self, request: pb.SearchRequest) -> pb.SearchResponse:  # noqa: N802
        """The same search for Serve's built-in gRPC proxy, when a config enables it: only
        benchmarks/serving.py does, to compare the two front ends (README, Architecture)."""
        servicer = self.gateway.search
        query = convert.search_query_from_proto(request, servicer.settings.search)
        return convert.search_response_to_proto(await servicer.pipeline.search(query))

    async def migrate(self, action: str, embedder: str | None = None) -> dict[str, object]:
        """``papersearch index migrate`` (pipeline/migration.py): ``start`` (to ``embedder``,
        ``name`` or ``name@version``), ``rollback`` or ``finish``. Returns the step's report,
        or ``{"error": ...}`` when it was refused or failed (nothing changed then, unless the
        message says the outcome is unknown)."""
        migrator = self.backend.migrator
        try:
            if action == "start":
                if not embedder:
                    raise MigrationRefused("start needs the embedder to migrate to")
                models = self.collections.settings.models
                report = await migrator.start(ModelRef.parse(embedder, models.repository))
            elif action == "rollback":
                report = await migrator.rollback()
            elif action == "finish":
                report = await migrator.finish()
            else:
                raise MigrationRefused(f"unknown migration action {action!r}")
        except (MigrationRefused, MigrationFailed, ModelNotFound, StoreError, NotReady,
                Overloaded) as error:
            return {"error": str(error)}
        except Exception as error:  # e.g. an encoder replica lost mid-copy: reported, not raised
            log.exception("migration step failed", extra={"action": action})
            return {"error": f"{type(error).__name__}: {error}"}
        return report.to_json()

    async def drain(self) -> None:
        """Drain this replica's gateway (gateway/server.py), then close the index (the embedded
        shard flushed): `papersearch serve` calls it on SIGTERM before taking Ray down, which
        skips Serve's shutdown and so ``__del__``; returns when the calls in flight have
        finished and the index is closed."""
        await self.gateway.drain()
        await self.collections.close()

    async def check_health(self) -> None:
        """Serve restarts the replica if the server failed to start (e.g. port taken)."""
        if self._started.done() and self._started.exception() is not None:
            raise RuntimeError(f"gRPC gateway failed: {self._started.exception()}")

    async def __del__(self) -> None:
        """Serve stopping this replica: drain (within graceful_shutdown_timeout_s), then close
        the index (the embedded shard is flushed)."""
        await self.gateway.drain()
        await self.collections.close()
