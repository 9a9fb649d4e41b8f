"""SearchService and IndexService over the pipeline's Backend, with deadlines and status codes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import grpc

from papersearch.api import convert
from papersearch.api.v1 import papersearch_pb2 as pb
from papersearch.api.v1 import papersearch_pb2_grpc as pb_grpc
from papersearch.corpus.paper import Paper
from papersearch.gateway.errors import to_status
from papersearch.pipeline.backend import Backend
from papersearch.pipeline.search import SearchPipeline
from papersearch.settings import Settings
from papersearch.telemetry import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


async def within_deadline(
    work: Awaitable[T], context: grpc.aio.ServicerContext, default_s: float
) -> T:
    """Await ``work`` until the client's deadline; on expiry it is cancelled downstream.
    (In this task: ``asyncio.wait_for`` would start another one, a loop turn more per call.)"""
    remaining = context.time_remaining()
    async with asyncio.timeout(remaining if remaining is not None else default_s):
        return await work


async def _fail(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    code, message = to_status(error)
    await context.abort(code, message)


class SearchServicer(pb_grpc.SearchServiceServicer):
    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        self.pipeline = SearchPipeline(backend, settings.search, settings.serve.rerank_timeout_s)

    async def Search(  # noqa: N802 (gRPC method name)
        self, request: pb.SearchRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchResponse:
        try:
            query = convert.search_query_from_proto(request, self.settings.search)
            result = await within_deadline(
                self.pipeline.search(query), context, self.settings.serve.default_deadline_s
            )
        except Exception as error:
            await _fail(context, error)
        metrics().search(result.reranked)
        return convert.search_response_to_proto(result)

    async def SimilarPapers(  # noqa: N802
        self, request: pb.SimilarPapersRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchResponse:
        try:
            query = convert.similar_query_from_proto(request, self.settings.search)
            hits = await within_deadline(
                self.backend.similar(query.paper_id, query.top_k, query.filter), context,
                self.settings.serve.default_deadline_s,
            )
        except Exception as error:
            await _fail(context, error)
        return pb.SearchResponse(
            hits=[pb.Hit(paper=convert.paper_to_proto(h.paper), score=h.score,
                         stages=pb.StageScores(dense=h.score)) for h in hits],
            reranked=False,
        )

    async def GetPaper(  # noqa: N802
        self, request: pb.GetPaperRequest, context: grpc.aio.ServicerContext
    ) -> pb.Paper:
        try:
            paper_id = convert.paper_id_from_proto(request.paper_id)
            paper = await within_deadline(
                self.backend.get(paper_id), context, self.settings.serve.default_deadline_s
            )
        except Exception as error:
            await _fail(context, error)
        return convert.paper_to_proto(paper)


class IndexServicer(pb_grpc.IndexServiceServicer):
    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.batch_size = settings.serve.upsert_batch_size

    async def UpsertPapers(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.Paper], context: grpc.aio.ServicerContext
    ) -> pb.UpsertSummary:
        received = upserted = 0
        errors: list[str] = []
        batch: list[Paper] = []
        try:
            async for message in request_iterator:
                received += 1
                try:
                    batch.append(convert.paper_from_proto(message))
                except ValueError as error:
                    given = convert.quoted(message.paper_id) if message.paper_id else "no id"
                    errors.append(f"paper {received} ({given}): {error}")
                if len(batch) >= self.batch_size:
                    upserted += await self._write(batch)
                    batch = []
            upserted += await self._write(batch)
        except Exception as error:
            await _fail(context, error)
        return convert.upsert_summary_to_proto(received, upserted, errors)

    async def _write(self, papers: list[Paper]) -> int:
        if not papers:
            return 0
        unique = list({p.id: p for p in papers}.values())  # last copy of a repeated id wins
        dense = await self.backend.encode_documents([p.text for p in unique])
        return await self.backend.upsert(unique, dense)

    async def DeletePapers(  # noqa: N802
        self, request: pb.DeletePapersRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeletePapersResponse:
        try:
            ids = convert.paper_ids_from_proto(request.paper_ids)
            deleted = await self.backend.delete(ids)
        except Exception as error:
            await _fail(context, error)
        return pb.DeletePapersResponse(deleted=deleted)
