"""The reranker's training data (modelbuild/mining.py): pseudo-queries, the first stage that
filters them and picks their negatives, and the distillation term (fast: no model)."""

from __future__ import annotations

import fcntl
import logging
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from papersearch.corpus.paper import Paper
from papersearch.modelbuild.mining import (
    TrainingExample,
    bm25_scores,
    body,
    claim_sentence,
    fused_scores,
    keyword_queries,
    mine,
    pseudo_queries,
    sample,
)

TOPICS = ["boundary layer flow", "compiler register allocation", "protein folding kinetics",
          "graph neural networks", "supersonic nozzle noise", "sorting networks"]
FILLER = "the study considers several aspects of this problem in some detail here"


def paper(n: int) -> Paper:
    topic = TOPICS[n % len(TOPICS)]
    return Paper(
        id=str(n), title=f"{topic} study number {n}",
        abstract=f"We consider {topic} in setting {n}. {FILLER} with {topic} variants. "
                 f"Our results show that {topic} improves by {n} percent over baselines.",
    )


class WordEncoder:
    """A stand-in for the embedder: hashed bag of words, unit length."""

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, sum(map(ord, word)) % 64] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    encode_documents = encode_queries = _encode


def test_claim_is_the_last_findings_sentence_never_the_first() -> None:
    abstract = ("We show that nothing is first. Then a method is described in a few words. "
                "Experiments indicate that it is twice as fast as before. "
                "Code is available at https://github.com/x/y for everyone to use.")
    assert claim_sentence(abstract) == "Experiments indicate that it is twice as fast as before."
    plain = "A first sentence of the abstract. A second sentence without any cue words in it."
    assert claim_sentence(plain) == "A second sentence without any cue words in it."
    assert claim_sentence("Only one sentence here, and it is long enough.") is None


def test_body_drops_a_leading_copy_of_the_title() -> None:
    cranfield = Paper("1", "flutter of panels .", "flutter of panels . panels flutter at mach 3 .")
    assert body(cranfield) == "panels flutter at mach 3 ."
    assert body(paper(1)) == paper(1).abstract


def test_keyword_queries_are_salient_shared_words_in_text_order() -> None:
    texts = [p.text for p in map(paper, range(12))]
    queries = keyword_queries(texts, random.Random(3))
    assert queries == keyword_queries(texts, random.Random(3))  # seeded
    for text, query in zip(texts, queries, strict=True):
        assert query is not None
        words = query.split()
        assert 2 <= len(words) <= 4
        order = [text.lower().index(w) for w in words]
        assert order == sorted(order)
    assert keyword_queries(["one lonely text"], random.Random(0)) == [None]


def test_passages_leave_out_the_query_text() -> None:
    papers = [paper(n) for n in range(6)]
    queries, passages = pseudo_queries(papers, ["title", "claim", "first_sentence"],
                                       random.Random(0))
    assert {q.kind for q in queries} == {"title", "claim", "first_sentence"}
    for query in queries:
        assert query.text not in passages[query.kind][query.source]
    assert all(len(v) == len(papers) for v in passages.values())


def test_bm25_and_fusion_rank_the_matching_document_first() -> None:
    docs = ["protein folding kinetics in water", "compiler register allocation", "sorting"]
    scores = bm25_scores(["register allocation", "unknownword"], docs)
    assert scores.shape == (2, 3)
    assert scores[0].argmax() == 1 and scores[0, [0, 2]].max() == 0
    assert not scores[1].any()
    dense = np.array([[0.5, 0.25, 0.0]], dtype=np.float32)
    lexical = np.array([[0.0, 4.0, 2.0]], dtype=np.float32)
    fused = fused_scores(dense, lexical, 0.6)
    assert fused == pytest.approx(np.array([[0.6, 0.3 + 0.4, 0.2]]))


def test_mine_round_trip_filter_negatives_and_teacher_scores() -> None:
    papers = [paper(n) for n in range(24)]
    kwargs = dict(negatives=2, depth=10, duplicate_cosine=0.999, seed=5,
                  query_kinds=["title", "claim", "keywords"])
    everything = mine(papers, WordEncoder(), roundtrip_top_n=0, **kwargs)  # type: ignore[arg-type]
    kept = mine(papers, WordEncoder(), roundtrip_top_n=1, **kwargs)  # type: ignore[arg-type]
    assert kept == mine(papers, WordEncoder(), roundtrip_top_n=1, **kwargs)  # type: ignore[arg-type]
    assert 0 < len(kept) < len(everything)
    for example in kept:
        assert len(example.negatives) == 2 and example.positive not in example.negatives
        assert len(example.teacher) == 3
        assert example.teacher[0] == max(example.teacher)  # round trip: its paper came first


@pytest.mark.parametrize("count", [0, 1])
def test_a_corpus_without_two_usable_papers_gives_no_examples(count: int) -> None:
    """Not BM25's "avg_len nan" from an empty corpus, nor a paper without negatives: one
    corpus among training.corpora with nothing to mine no longer stops the training."""
    short = [Paper(id="s", title="Too short", abstract="Two words.")]
    papers = [paper(n) for n in range(count)] + short
    assert mine(papers, WordEncoder(), negatives=2, depth=10,  # type: ignore[arg-type]
                duplicate_cosine=0.999, seed=5) == []


def test_sample_is_a_seeded_prefix_of_a_shuffle() -> None:
    examples = [TrainingExample(str(n), "p", ("n",)) for n in range(10)]
    chosen = sample(examples, 4, seed=1)
    assert chosen == sample(examples, 4, seed=1) and len(chosen) == 4
    assert sorted(e.query for e in sample(examples, None, seed=1)) == sorted(
        e.query for e in examples)


def test_distillation_is_zero_when_the_reranker_agrees_with_the_first_stage() -> None:
    torch = pytest.importorskip("torch")
    from papersearch.modelbuild.training import _distillation

    group = [TrainingExample("q", "p", ("a", "b"), (1.0, 0.5, 0.25))]
    agree = torch.tensor([[1.0, 0.5, 0.25]]) / 0.05
    assert float(_distillation(agree, group, 0.05)) == pytest.approx(0.0, abs=1e-6)
    assert float(_distillation(agree.flip(1), group, 0.05)) > 1.0


def test_training_cuts_a_long_query_as_the_served_reranker_does(embedder_dir: Path) -> None:
    """Training cut a long query at a word boundary, serving at a token's end: one query in
    ten reached the model as other text than it learnt on."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    from papersearch.modelbuild.training import _fit
    from papersearch.models.runtime import cut_query

    hf = transformers.AutoTokenizer.from_pretrained(embedder_dir, local_files_only=True)
    served = Tokenizer.from_file(str(embedder_dir / "tokenizer.json"))
    served.no_truncation()
    query = "video diffusion model (latent, 3D-aware) for text-to-video synthesis " * 6
    for tokens in (5, 12, 13, 40, 500):
        offsets = served.encode(query, add_special_tokens=False).offsets
        assert _fit(hf, query, tokens) == cut_query(query, offsets, tokens), tokens
    assert _fit(hf, "a short query", 8) == "a short query"
    cut = _fit(hf, query, 12)
    assert len(hf(cut, add_special_tokens=False)["input_ids"]) <= 12 < len(hf(query)["input_ids"])


def test_publishing_a_trained_reranker_removes_a_killed_publish_s_copy(tmp_path: Path) -> None:
    """A publish killed mid-way (OOM, SIGKILL) left its staging copy, a whole model's size, and
    every such crash one more: the next publish of the checkpoint removes them."""
    pytest.importorskip("torch")
    from papersearch.modelbuild.training import DONE_MARKER, _publish

    class Saved:
        def save_pretrained(self, folder: Path) -> None:
            (Path(folder) / "weights.bin").write_bytes(b"w")

    target = tmp_path / "reranker-checkpoints" / "abc123"
    stale = target.parent / ".abc123.x1y2z3.partial"
    stale.mkdir(parents=True)
    (stale / "weights.bin").write_bytes(b"half")
    other = target.parent / ".def456.q7r8s9.partial"  # another checkpoint's: not this one's
    other.mkdir()
    _publish(target, cast(Any, Saved()), cast(Any, Saved()), {"steps": 1})
    assert (target / DONE_MARKER).is_file() and (target / "weights.bin").read_bytes() == b"w"
    assert not stale.exists() and other.exists()


def test_training_removes_other_keys_resume_folders_unless_their_run_is_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A resume folder (the whole training state, ~260 MB) went only with a later run of its
    own key: with the corpus grown or a setting changed (as the divergence error advises) it
    stayed for good. A run removes those of other keys before it trains, but not one whose
    run trains now (its lock held), its own, nor finished checkpoints (the cache)."""
    pytest.importorskip("torch")
    from papersearch.modelbuild import training
    from papersearch.settings import TrainingSettings

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    examples = [TrainingExample("q", "positive", ("negative",))]
    cfg = TrainingSettings(checkpoint_every_s=0)
    folder = tmp_path / "reranker-checkpoints"
    own = folder / (training.checkpoint_key(base, examples, cfg) + training.RESUME_SUFFIX)
    stale, live = folder / "0123456789abcdef.resume", folder / "fedcba9876543210.resume"
    finished = folder / "00000000ffffffff"
    for made in (own, stale, live, finished):
        made.mkdir(parents=True)
        (made / training.CHECKPOINT_FILE).write_bytes(b"state" * 100)
    (finished / training.DONE_MARKER).write_text("{}")

    class Loaded(Exception):
        """The run got to loading the model: the training would follow."""

    def load(*args: Any, **kwargs: Any) -> Any:
        raise Loaded

    monkeypatch.setattr(training.AutoTokenizer, "from_pretrained", load)
    with (live / ".lock").open("a") as running:  # a run of that key, training now
        fcntl.flock(running, fcntl.LOCK_SH)
        with caplog.at_level(logging.INFO, logger="papersearch.modelbuild.training"), \
                pytest.raises(Loaded):
            training.train(base, examples, cfg, tmp_path, probe=False)
    assert not stale.exists()
    for kept in (own, live, finished):
        assert (kept / training.CHECKPOINT_FILE).is_file(), kept
    assert [(getattr(r, "path", None), getattr(r, "bytes", None)) for r in caplog.records
            if r.getMessage() == "another key's resume checkpoint removed"] == [(str(stale), 500)]


def tiny_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> tuple[Any, Path, list[TrainingExample], Any]:
    """modelbuild.training, a base folder, 12 examples and settings for a run of 3 steps (a
    checkpoint after each but the last) of a one-weight model in Hugging Face's place:
    milliseconds, not a real training."""
    torch = pytest.importorskip("torch")
    from papersearch.modelbuild import training
    from papersearch.settings import TrainingSettings

    class Tiny(torch.nn.Linear):
        """The model and its tokenizer: published as Hugging Face's would be."""

        def save_pretrained(self, folder: Path) -> None:
            (Path(folder) / "weights.bin").write_bytes(b"w")

    tiny = Tiny(1, 1)
    monkeypatch.setattr(training.AutoTokenizer, "from_pretrained", lambda *a, **k: tiny)
    monkeypatch.setattr(training.AutoModelForSequenceClassification, "from_pretrained",
                        lambda *a, **k: tiny)
    monkeypatch.setattr(training, "_step", lambda model, *_: (model.weight ** 2).sum())
    monkeypatch.setattr(training, "_seed_everything", lambda *_: None)  # process-wide
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    examples = [TrainingExample(f"q{n}", "positive", ("negative",)) for n in range(12)]
    return training, base, examples, TrainingSettings(checkpoint_every_s=0)


def test_a_resume_folder_stays_while_another_run_of_its_key_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Runs of one key share its resume folder, each holding its lock shared. The first to
    finish removed the folder, lock file included, while the other still trained: its next
    checkpoint made the folder again with no lock held, and a run of another key removed it
    mid-training. The folder now goes with the last of them to finish."""
    training, base, examples, cfg = tiny_training(tmp_path, monkeypatch)
    folder = tmp_path / "reranker-checkpoints"
    key = training.checkpoint_key(base, examples, cfg)
    own, other = folder / (key + training.RESUME_SUFFIX), folder / "0123456789abcdef.resume"
    with training._training(own):  # a run of the key, training
        lock = (own / training.RESUME_LOCK).stat().st_ino
        # another run of the key trains side by side and finishes first
        assert training.train(base, examples, cfg, tmp_path, probe=False) == folder / key
        assert (folder / key / training.DONE_MARKER).is_file()
        assert (own / training.CHECKPOINT_FILE).is_file()  # its last checkpoint
        assert (own / training.RESUME_LOCK).stat().st_ino == lock  # the lock still held
        # a run of another key cannot take it, nor one of this key finding the model cached
        with training._training(other):
            training._remove_other_resumes(other)
        assert training.train(base, examples, cfg, tmp_path, probe=False) == folder / key
        assert (own / training.RESUME_LOCK).stat().st_ino == lock
    assert not own.exists()  # the last run of the key to finish removed it
    assert not other.exists()


def test_a_training_logs_its_estimate_and_draws_no_bar_into_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """train-reranker printed its estimate to stderr past the log's format and level (a plain
    line among JSON ones), and its bar and transformers' ("Loading weights", "Writing model
    shards") wrote their redraws into a stderr that was a file or a CI's log."""
    training, base, examples, cfg = tiny_training(tmp_path, monkeypatch)
    monkeypatch.setattr(training, "_probe", lambda *_: 2.0)  # seconds a step
    from transformers.utils import logging as transformers_logging

    bars_off: list[bool] = []  # transformers' switch is process-wide: not thrown here
    monkeypatch.setattr(transformers_logging, "disable_progress_bar",
                        lambda: bars_off.append(True))
    with caplog.at_level(logging.INFO, logger=training.log.name):
        training.train(base, examples, cfg, tmp_path)
    assert capsys.readouterr().err == ""  # capsys' stderr is no terminal
    assert bars_off
    # its own records only: a thread another test left (Ray Data's metrics poller) logs too
    (estimate,) = [r for r in caplog.records if r.name == training.log.name
                   and r.getMessage().startswith("train-reranker: 3 steps")]
    assert "~2.0 s/step here, about 6 s" in estimate.getMessage()
    assert {k: estimate.__dict__[k] for k in ("step", "steps", "s_per_step", "eta_s")} == {
        "step": 0, "steps": 3, "s_per_step": 2.0, "eta_s": 6}
