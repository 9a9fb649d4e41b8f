"""The whole service for real: a local Ray instance, the Serve app from the Serve config YAML,
the gRPC gateway, the embedded index of the sample corpus; every call over a gRPC channel."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest

from papersearch.client import SearchClient
from papersearch.corpus.paper import Paper
from papersearch.loadtest.monitor import MetricsSnapshot, fetch, parse_metrics
from papersearch.local_ray import LOCAL_RAY_ENV
from papersearch.pipeline.query import SearchQuery
from papersearch.settings import Settings
from tests.conftest import ROOT
from tests.ports import free_port

pytestmark = pytest.mark.slow


class Target(NamedTuple):
    address: str
    http: str  # the HTTP/JSON API's base URL
    metrics_port: int
    repository: Path  # the service's model repository: the embedder only, at first


@pytest.fixture(scope="module")
def target(sample_settings: Settings, sample_index: Path, embedder_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    from papersearch.serving import launcher

    repository = tmp_path_factory.mktemp("served-models")
    shutil.copytree(embedder_dir, repository / embedder_dir.parent.name / embedder_dir.name)
    port, http_port = free_port(), free_port()
    overrides = {
        "models": {"repository": str(repository), "reload_poll_s": 1,
                   "cache_dir": str(sample_settings.models.cache_dir)},
        "index": {"data_dir": str(sample_index)},
        # More coalesced calls in flight than the small encoder queue below admits (2 + 2).
        "serve": {"grpc_port": port, "http_port": http_port, "health_poll_s": 0.5,
                  "rerank_timeout_s": 60,
                  "coalesce_in_flight": 8},
        "search": {"rerank_enabled": True},
    }
    settings = sample_settings.model_copy(update={"serve": sample_settings.serve.model_copy(
        update={"serve_config": ROOT / "deploy" / "serve" / "papersearch.yaml",
                "metrics_port": free_port(), "dashboard_port": free_port()})})
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray socket paths are length-limited
    # A deliberately small encoder queue, fixed at one replica, so overload can be provoked.
    small_queue = {"QueryEncoder": {"max_ongoing_requests": 2, "max_queued_requests": 2,
                                    "autoscaling_config": None, "num_replicas": 1}}
    try:
        launcher.start(settings, num_cpus=4, temp_dir=temp_dir, overrides=overrides,
                       deployment_options=small_queue)
        yield Target(f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}",
                     settings.serve.metrics_port, repository)
    finally:
        launcher.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def client(target: Target) -> Iterator[SearchClient]:
    with SearchClient(target.address, timeout_s=60) as client:
        deadline = time.monotonic() + 120
        while client.health() != "SERVING":
            assert time.monotonic() < deadline, "gateway never became SERVING"
            time.sleep(0.5)
        yield client


def test_reranker_model_arriving_later_is_picked_up(target: Target, client: SearchClient,
                                                    reranker_dir: Path) -> None:
    """Started without a reranker model (none trained yet): SERVING, first-stage results; the
    model then appears in the repository and is served without a restart."""
    assert client.health() == "SERVING"
    before = client.search(SearchQuery("vision language model", rerank=True))
    assert not before.reranked and len(before.hits) == 10
    staging = target.repository / "staging"  # a version appears whole, as an export writes it
    shutil.copytree(reranker_dir, staging)
    (target.repository / reranker_dir.parent.name).mkdir()
    staging.rename(target.repository / reranker_dir.parent.name / reranker_dir.name)
    deadline = time.monotonic() + 120
    while not client.search(SearchQuery("vision language model", rerank=True)).reranked:
        assert time.monotonic() < deadline, "the reranker model was never picked up"
        time.sleep(0.5)


def test_the_serve_controller_runs_at_the_configured_interval(target: Target) -> None:
    import psutil

    from papersearch.serving.launcher import CONTROL_LOOP_ENV

    def command_line(process: psutil.Process) -> str:  # "" for one that exits meanwhile
        try:
            return " ".join(process.cmdline())
        except psutil.Error:
            return ""

    # the local Ray instance's processes are this one's descendants (ray.init started them)
    controllers = [p for p in psutil.Process().children(recursive=True)
                   if "ray::ServeController" in command_line(p)]
    assert len(controllers) == 1
    expected = str(Settings().serve.control_loop_interval_s)
    assert all(p.environ().get(CONTROL_LOOP_ENV) == expected for p in controllers)


def test_search_through_ray_serve(client: SearchClient) -> None:
    result = client.search(SearchQuery(
        "federated learning across domains without batch normalization", top_k=5))
    assert any(h.paper.title.startswith("FedWon") for h in result.hits[:3])
    assert result.reranked and result.hits[0].stages.rerank is not None
    assert {"encode", "retrieve", "rerank", "total"} <= set(result.timings_ms)
    dense_only = client.search(SearchQuery("layer normalization", mode="dense", rerank=False))
    assert not dense_only.reranked and len(dense_only.hits) == 10


def test_status_codes_through_ray_serve(client: SearchClient) -> None:
    with pytest.raises(grpc.RpcError) as invalid:
        client.search(SearchQuery("   "))
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as missing:
        client.get("no-such-paper")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-paper" in (missing.value.details() or "")
    assert "Traceback" not in (missing.value.details() or "")
    with pytest.raises(grpc.RpcError) as late:
        client.search(SearchQuery("graph neural networks"), timeout_s=0.001)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_http_json_answers_as_grpc_does(target: Target, client: SearchClient) -> None:
    """The same search over HTTP/JSON and gRPC: the same hits in the same order; errors carry
    the gRPC status with its HTTP code."""
    query = SearchQuery("federated learning without batch normalization", top_k=5, rerank=False)
    over_grpc = [h.paper.id for h in client.search(query).hits]
    status, body = post_json(f"{target.http}/papersearch.v1.SearchService/Search",
                             {"query": query.text, "top_k": 5, "rerank": False})
    assert status == 200 and [h["paper"]["paper_id"] for h in body["hits"]] == over_grpc
    assert body["reranked"] is False and "dense" in body["hits"][0]["stages"]
    status, body = post_json(f"{target.http}/papersearch.v1.SearchService/GetPaper",
                             {"paper_id": "no-such-paper"})
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"
    with urllib.request.urlopen(f"{target.http}/readyz", timeout=10) as ready:
        assert json.load(ready) == {"status": "SERVING"}


def post_json(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_streaming_upsert_then_search(client: SearchClient) -> None:
    paper = Paper(
        id="serve-test-bees",
        title="Acoustic monitoring of honeybee colonies with contrastive audio embeddings",
        abstract="We record the buzzing inside beehives and learn audio embeddings that detect "
                 "swarming and queen loss days in advance, using contrastive pretraining.",
    )
    try:  # the index is the session's sample index: the paper leaves it whatever happens here
        summary = client.upsert([paper])
        assert (summary.received, summary.upserted, summary.skipped) == (1, 1, 0)
        found = client.search(SearchQuery("detect swarming from beehive sounds", top_k=3))
        assert found.hits[0].paper.id == "serve-test-bees"
    finally:
        deleted = client.delete(["serve-test-bees"])
    assert deleted == 1


def test_full_queues_give_resource_exhausted(client: SearchClient) -> None:
    """Concurrent searches overflow the encoder's real Serve queue (max_queued_requests)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> grpc.StatusCode:
        try:
            client.search(SearchQuery(f"graph neural network number {i}", rerank=False))
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()

    with ThreadPoolExecutor(max_workers=48) as pool:
        codes = list(pool.map(one, range(96)))
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert client.search(SearchQuery("graph neural networks", rerank=False)).hits  # recovers


def _series(snapshot: MetricsSnapshot, name: str, **labels: str) -> list[float]:
    """Values of a metric's series (summed over Ray's per-process labels) carrying ``labels``."""
    return [value for (metric, tags), value in snapshot.values.items()
            if metric == name and labels.items() <= dict(tags).items()]


def test_metrics_on_the_metrics_port(target: Target, client: SearchClient) -> None:
    """Requests show up in Prometheus metrics (Ray exports them every few seconds)."""
    client.search(SearchQuery("contrastive learning", rerank=True))
    client.search(SearchQuery("contrastive learning", rerank=False, feedback=True))
    for bad in (lambda: client.search(SearchQuery(" ")), lambda: client.get("no-such-paper")):
        with pytest.raises(grpc.RpcError):
            bad()
    wanted = [
        ("ray_papersearch_requests_total", {"method": "Search", "code": "OK"}),
        ("ray_papersearch_requests_total", {"method": "Search", "code": "INVALID_ARGUMENT"}),
        ("ray_papersearch_requests_total", {"method": "GetPaper", "code": "NOT_FOUND"}),
        ("ray_papersearch_request_latency_ms_count", {"method": "Search", "code": "OK"}),
        ("ray_papersearch_searches_total", {"reranked": "true"}),
        ("ray_papersearch_searches_total", {"reranked": "false"}),
        ("ray_papersearch_searches_total", {"feedback": "true"}),
        ("ray_papersearch_searches_total", {"feedback": "false"}),
        ("ray_papersearch_batch_size_count", {"deployment": "QueryEncoder"}),
        ("ray_papersearch_batch_size_count", {"deployment": "Reranker"}),
        ("ray_serve_num_router_requests_total", {}),
        ("ray_papersearch_model_precision", {"deployment": "QueryEncoder"}),
        ("ray_papersearch_model_precision", {"deployment": "Reranker"}),
    ]
    deadline = time.monotonic() + 60
    while True:
        # The load test's own reader, with Serve's metrics kept too.
        url = f"http://127.0.0.1:{target.metrics_port}/metrics"
        snapshot = parse_metrics(fetch(url, timeout_s=10), prefix="ray_")
        missing = [(n, lab) for n, lab in wanted if sum(_series(snapshot, n, **lab)) <= 0]
        # every call counted in is counted out: with none running, every replica's gauge is 0
        in_flight = _series(snapshot, "ray_papersearch_in_flight", deployment="Reranker")
        if not missing and in_flight and all(value == 0 for value in in_flight):
            break
        assert time.monotonic() < deadline, (
            f"metrics never exported: {missing}" if missing
            else f"in-flight gauges not back to 0 with nothing running: {in_flight}")
        time.sleep(2)


def test_reranker_scales_up_under_load(client: SearchClient) -> None:
    """Autoscaling smoke test with the Serve config's own autoscaling_config: sustained rerank
    load on the single Reranker replica makes Serve add one. (Sparse mode: no query encoding,
    so this module's deliberately tiny encoder queue stays out of it.) Four searches in flight
    keep the replica busy all the time, which is what the policy reads (utilisation); more only
    queue: with twelve, on a slow day, a search waited past its 30 s deadline before the second
    replica came (this module's rerank budget is 60 s, so nothing cuts the wait short)."""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    def states() -> dict[str, int]:
        app = serve.status().applications["papersearch"]
        return dict(app.deployments["Reranker"].replica_states)

    def replicas() -> int:
        return int(states().get("RUNNING", 0))

    # The rerank searches of the tests before can leave a second replica starting or running
    # (one fp32 rerank window keeps the replica busy for seconds): start from one, after the
    # policy has scaled the idle pool down (downscale_delay_s).
    settle = time.monotonic() + 120
    while states() != {"RUNNING": 1}:
        assert time.monotonic() < settle, f"the idle Reranker pool stayed at {states()}"
        time.sleep(1)
    stop = time.monotonic() + 90
    scaled = threading.Event()

    def load(i: int) -> None:
        while not scaled.is_set() and time.monotonic() < stop:
            client.search(SearchQuery(f"graph neural networks for molecules {i}", mode="sparse",
                                      rerank=True))

    with ThreadPoolExecutor(max_workers=4) as pool:
        workers = [pool.submit(load, i) for i in range(4)]
        while time.monotonic() < stop and not scaled.is_set():
            if replicas() >= 2:
                scaled.set()
            time.sleep(1)
        scaled.set()
        for worker in workers:
            worker.result()  # no failed request while scaling
    assert replicas() >= 2, "no Reranker replica added under sustained load"


class FakeRay:
    """Ray's and Serve's starts stood in for: what is checked is the launcher's own logic."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import ray
        from ray.serve._private import api as serve_api

        from papersearch.serving import launcher

        self.running, self.stopped, self.options = False, 0, dict[str, Any]()
        for name in (*LOCAL_RAY_ENV, launcher.CONTROL_LOOP_ENV):  # start() sets them
            monkeypatch.delenv(name, raising=False)  # restored afterwards, as they were
        monkeypatch.setattr(ray, "is_initialized", lambda: self.running)
        monkeypatch.setattr(ray, "shutdown", self.shutdown)
        monkeypatch.setattr(launcher, "init_keeping_signals", self.init)
        monkeypatch.setattr(serve_api, "serve_start", self.serve_start)

    def init(self, **options: Any) -> None:
        self.running, self.options = True, options

    def shutdown(self) -> None:
        self.running, self.stopped = False, self.stopped + 1

    def serve_start(self, **_: Any) -> None:
        raise RuntimeError("the Serve controller did not start")


def _launch(settings: Settings, **serve: Any) -> None:
    from papersearch.serving import launcher

    launcher.start(settings.model_copy(update={"serve": settings.serve.model_copy(
        update={"serve_config": ROOT / "deploy" / "serve" / "papersearch.yaml", **serve})}))


def test_a_failed_start_takes_down_the_ray_instance_it_started(
    sample_settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deploy that fails (or times out) left the Ray instance start() had begun running:
    its processes, ports and temp dir, and a later start() in the process reused it."""
    ray = FakeRay(monkeypatch)
    with pytest.raises(RuntimeError, match="did not start"):
        _launch(sample_settings)
    assert (ray.running, ray.stopped) == (False, 1)
    ray.running = True  # one already running (a test's, a driver's) is not ours to stop
    with pytest.raises(RuntimeError, match="did not start"):
        _launch(sample_settings)
    assert (ray.running, ray.stopped) == (True, 1)


def test_ray_binds_loopback_unless_told_to_pick_the_hosts_address(
    sample_settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray exports metrics on loopback when its node address is: a container (the image sets
    serve.ray_node_ip empty) could not publish metrics_port."""
    ray = FakeRay(monkeypatch)
    for node_ip, given in [("127.0.0.1", "127.0.0.1"), ("", None)]:
        with pytest.raises(RuntimeError, match="did not start"):
            _launch(sample_settings, ray_node_ip=node_ip)
        assert ray.options["_node_ip_address"] == given
