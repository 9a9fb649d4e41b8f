"""`papersearch tune`: the choice rule (fast) and the harness against the real Store (slow)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from papersearch.corpus.readers import CorpusFormat, CorpusReader
from papersearch.encoder.runtime import Encoder
from papersearch.evaluation.datasets import load_dataset
from papersearch.evaluation.fusion_tuning import (
    MIN_JUDGED_QUERIES,
    Candidate,
    candidates,
    check_roles,
    choose,
    gains,
    too_few,
    tune_fusion,
)
from papersearch.evaluation.harness import run_eval
from papersearch.evaluation.metrics import Report
from papersearch.evaluation.paired import against, choose_on_tuning, paired
from papersearch.settings import Settings
from tests.beir_helpers import write_beir


def report(ndcg: float) -> Report:
    return Report(ndcg, 0.0, 0.0, 1, 0, {"q": ndcg})


def pool(*names: str, runs_in_store: bool = True) -> list[Candidate]:
    return [Candidate(n, lambda d, s: [], {"fusion": "rrf"} if runs_in_store else None)
            for n in names]


def test_choose_the_best_tuning_mean_that_loses_no_tuning_set() -> None:
    baseline = {"a": report(0.5), "b": report(0.4)}
    reports = {
        "higher mean, loses b": {"a": report(0.7), "b": report(0.39)},
        "wins both": {"a": report(0.55), "b": report(0.42)},
        "ties both": {"a": report(0.5), "b": report(0.4)},
        "reference only": {"a": report(0.9), "b": report(0.9)},
    }
    stored = pool("higher mean, loses b", "wins both", "ties both")
    chosen = choose([*stored, *pool("reference only", runs_in_store=False)], reports,
                    baseline, ["a", "b"])
    assert chosen is not None and chosen.name == "wins both"
    assert choose(pool("higher mean, loses b"), reports, baseline, ["a", "b"]) is None
    # a tie (the configured fusion is in the grid) is no choice: it left it to the held-out sets
    assert choose(pool("ties both", "higher mean, loses b"), reports, baseline,
                  ["a", "b"]) is None


def test_the_tuning_sets_choose_a_gain_on_their_mean_that_loses_none_of_them() -> None:
    """The benchmarks' rule (dense_passages, dense_truncation, bm25_params, title_weight)."""
    def runs(a: float, b: float) -> dict[str, dict[str, Report]]:
        return {"a": {"hybrid": report(a)}, "b": {"hybrid": report(b)}}

    candidates = {"base": runs(0.5, 0.4), "loses b": runs(0.7, 0.39),
                  "wins both": runs(0.55, 0.42), "ties both": runs(0.5, 0.4),
                  "wins more": runs(0.6, 0.41)}
    choice = choose_on_tuning(candidates, "base", ["a", "b"])
    assert choice.eligible == ["wins both", "wins more"]  # "ties both": no gain on the mean
    assert choice.chosen == choice.judged == "wins more"
    none = choose_on_tuning({k: candidates[k] for k in ("base", "loses b", "ties both")},
                            "base", ["a", "b"])
    assert none.eligible == [] and none.chosen is None
    assert none.judged == "loses b"  # still judged: the best tuning mean


def test_candidates_cover_rrf_and_the_convex_fusion_the_store_runs() -> None:
    found = {c.name: c for c in candidates(100)}
    assert found["rrf k=60"].settings == {"fusion": "rrf", "rrf_k": 60}
    assert found["convex max dense=0.6"].settings == {"fusion": "convex",
                                                       "fusion_dense_weight": 0.6}
    assert found["convex dbsf dense=0.5"].settings is None
    # Qdrant's k=60 counts ranks from 0: the first of one list scores 1/60 per unit weight.
    assert found["rrf k=60"].fuse([("x", 1.0)], []) == [("x", pytest.approx(1 / 60))]


def test_paired_counts_and_a_clear_difference_is_significant() -> None:
    a = {f"q{i}": 0.2 for i in range(30)}
    b = {f"q{i}": 0.5 if i < 25 else 0.2 for i in range(30)}
    result = paired(a, b)
    assert (result.wins, result.losses, result.ties) == (25, 0, 5)
    assert result.mean_difference == pytest.approx(0.25) and result.p_value < 0.001
    assert paired(a, a).p_value == 1.0


def test_against_tables_both_runs_and_their_comparison_per_set_and_mode() -> None:
    before = {"a": {"sparse": report(0.3), "hybrid": report(0.5)}, "b": {"hybrid": report(0.4)}}
    after = {"a": {"sparse": report(0.3), "hybrid": report(0.6)}, "b": {"hybrid": report(0.35)}}
    table = against(before, after, ["a", "b"], ["hybrid"], ("default", "judged"))
    assert set(table) == {"a", "b"} and set(table["a"]) == {"hybrid"}
    assert table["a"]["hybrid"] == {"default": 0.5, "judged": 0.6,
                                    **paired({"q": 0.5}, {"q": 0.6}).to_dict()}
    assert table["b"]["hybrid"]["mean_difference"] == pytest.approx(-0.05)
    assert (table["b"]["hybrid"]["wins"], table["b"]["hybrid"]["losses"]) == (0, 1)


@pytest.mark.slow
def test_tune_on_a_small_judged_collection(sample_settings: Settings, embedder_dir: Path,
                                           tmp_path: Path) -> None:
    """Every candidate on every set; the baseline (no feedback), its feedback row and the convex
    row are what the Store's own hybrid search scores with those settings."""
    docs = {
        "d1": "Photosynthesis converts light energy into chemical energy in plant chloroplasts.",
        "d2": "Volcanic eruptions eject ash and lava; magma chambers drive the activity.",
        "d3": "Neural machine translation uses encoder-decoder transformers with attention.",
        "d4": "Interest rates set by central banks influence inflation and employment.",
        "d5": "Black holes bend spacetime so strongly that light cannot escape them.",
        "d6": "Chlorophyll absorbs red and blue light; plants reflect green.",
    }
    queries = {"q1": "how do plants turn sunlight into energy", "q2": "inflation and banks",
               "q3": "attention in translation models", "q4": "light and gravity"}
    qrels = [("q1", "d1", 2), ("q1", "d6", 1), ("q2", "d4", 1), ("q3", "d3", 1), ("q4", "d5", 1)]
    folder = write_beir(tmp_path / "mini", docs, queries, qrels)
    settings = sample_settings.model_copy(update={"eval_dir": tmp_path / "eval"})
    dataset, encoder = load_dataset(folder), Encoder(embedder_dir)
    held = load_dataset(write_beir(tmp_path / "held", docs, queries, qrels[:3]))

    out = tune_fusion([dataset], [held], settings, encoder)

    # each set's corpus read, as eval reports it (tune listed none of its skipped records)
    read = {"read": len(docs), "skipped": 0, "duplicates": 0, "conflicts": 0}
    assert out["corpora"] == {"mini": read, "held": read}
    names = {c.name for c in candidates(settings.index.prefetch_limit)}
    assert {c["name"] for c in out["candidates"]} == names
    assert all(set(c["ndcg@10"]) == {"mini", "held"} for c in out["candidates"])
    plain = settings.model_copy(update={"index": settings.index.model_copy(
        update={"prf_enabled": False})})
    configured = run_eval(dataset, ("hybrid", "hybrid+feedback"), plain, encoder, None)
    assert out["baseline"]["ndcg@10"]["mini"] == round(configured["hybrid"].ndcg_at_10, 4)
    feedback = out["feedback"]
    assert feedback["ndcg@10"]["mini"] == round(configured["hybrid+feedback"].ndcg_at_10, 4)
    assert feedback["settings"]["index.prf_dense_docs"] == settings.index.prf_dense_docs
    assert "index.prf_enabled" not in feedback["settings"]
    verdict = feedback["against_baseline"]["mini"]
    assert verdict["wins"] + verdict["losses"] + verdict["ties"] == len(queries)
    # too few judged queries (fewer than MIN_JUDGED_QUERIES) to say any set gains
    assert len(queries) < MIN_JUDGED_QUERIES and not feedback["tuning_sets_agree"]
    assert feedback["too_few_queries"] == {"mini": len(queries), "held": 2}  # q1, q2 judged
    convex = plain.model_copy(update={"index": plain.index.model_copy(
        update={"fusion": "convex", "fusion_dense_weight": 0.3})})
    stored = run_eval(dataset, ("hybrid",), convex, encoder, None)["hybrid"]
    row = next(c for c in out["candidates"] if c["name"] == "convex max dense=0.3")
    assert row["ndcg@10"]["mini"] == round(stored.ndcg_at_10, 4)
    chosen = out["chosen"]
    assert chosen is None or set(chosen["against_baseline"]) == {"mini", "held"}


def test_a_set_cannot_both_choose_and_judge(tmp_path: Path) -> None:
    """Results are kept by a set's folder name: a held-out folder named like a tuning one made
    the choice on the held-out judgments."""
    docs, queries = {"d1": "a text", "d2": "another"}, {"q1": "text"}
    mine = load_dataset(write_beir(tmp_path / "a" / "mydata", docs, queries, [("q1", "d1", 1)]))
    other = load_dataset(write_beir(tmp_path / "b" / "mydata", docs, queries, [("q1", "d2", 1)]))
    for tuning, held_out in (([mine], [other]), ([mine], [mine]), ([mine, mine], [other])):
        with pytest.raises(ValueError, match="mydata is given twice"):
            check_roles(tuning, held_out)
    with pytest.raises(ValueError, match="at least one tuning set and one held-out set"):
        check_roles([mine], [])


def test_a_gain_is_more_than_round_off() -> None:
    baseline = {"1": 0.6, "2": 0.7, "3": 0.2}
    cancelling = paired(baseline, {"1": 0.5, "2": 0.5, "3": 0.5})  # -0.1 -0.2 +0.3
    assert cancelling.mean_difference > 0 and not gains({"s": cancelling}, ["s"], 1)  # 1.85e-17
    assert gains({"s": paired(baseline, {"1": 0.7, "2": 0.7, "3": 0.2})}, ["s"], 1)


def test_a_gain_on_too_few_judged_queries_is_no_verdict() -> None:
    """One query's gain said "held-out sets agree: adopt it" (p = 1)."""
    better = paired({"1": 0.2}, {"1": 0.9})
    assert not gains({"s": better}, ["s"]) and too_few({"s": better}, ["s"]) == {"s": 1}
    many = {str(n): 0.2 for n in range(MIN_JUDGED_QUERIES)}
    enough = paired(many, {q: 0.9 for q in many})
    assert gains({"s": enough}, ["s"]) and too_few({"s": enough}, ["s"]) == {}


def test_a_held_out_set_cannot_be_tuned_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """tune ran with MED and CISI as its tuning sets (held_out_sets named them) without a word,
    and tune-rerank only warned: both refuse, before any model is loaded."""
    from papersearch.cli import main

    held = write_beir(tmp_path / "held", {"d1": "a text"}, {"q1": "text"}, [("q1", "d1", 1)])
    other = write_beir(tmp_path / "other", {"d1": "a text"}, {"q1": "text"}, [("q1", "d1", 1)])
    monkeypatch.setenv("PAPERSEARCH_HELD_OUT_SETS", json.dumps([str(held)]))
    monkeypatch.setenv("PAPERSEARCH_MODELS__REPOSITORY", str(tmp_path / "no-models"))
    monkeypatch.setenv("PAPERSEARCH_TRAINING__CORPORA",
                       json.dumps([str(other), str(held / "corpus.jsonl")]))  # a file in it
    for command in (["tune-rerank", "--dataset", str(held)],
                    ["tune", "--tune", str(other), "--tune", str(held / "."),
                     "--held-out", str(other)],
                    ["models", "train-reranker"]):  # its documents were mined, unchecked
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "is a held-out set (held_out_sets)" in err, command
        assert "no exported model" not in err
    # run from another directory, where the relative default paths resolve elsewhere: the
    # set is still known by its folder name (MED was tuned on from /tmp)
    copy = write_beir(tmp_path / "elsewhere" / "med", {"d1": "a"}, {"q1": "a"}, [("q1", "d1", 1)])
    monkeypatch.setenv("PAPERSEARCH_HELD_OUT_SETS", json.dumps(["../shared/eval/med"]))
    monkeypatch.setenv("PAPERSEARCH_TRAINING__CORPORA", json.dumps([str(copy)]))
    monkeypatch.chdir(tmp_path)
    for command in (["tune-rerank", "--dataset", str(copy)], ["models", "train-reranker"]):
        assert main(command) == 2
        assert "is a held-out set (held_out_sets)" in capsys.readouterr().err, command
    # held_out_sets naming a set's corpus.jsonl: the set is still known by its folder's name
    monkeypatch.setenv("PAPERSEARCH_HELD_OUT_SETS", json.dumps([str(copy / "corpus.jsonl")]))
    other = write_beir(tmp_path / "other-copy" / "med", {"d1": "a"}, {"q1": "a"},
                       [("q1", "d1", 1)])
    assert main(["tune-rerank", "--dataset", str(other)]) == 2
    assert "is a held-out set (held_out_sets)" in capsys.readouterr().err


def test_tunes_table_names_each_set_whole(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    """Set names were cut to 10 characters: "medsample-train" and "medsample-test" both
    headed their columns "medsample-", and sets are known only by their names."""
    import papersearch.encoder.runtime as runtime
    import papersearch.evaluation.datasets as datasets
    import papersearch.evaluation.fusion_tuning as fusion_tuning
    from papersearch.cli import main

    names = ["medsample-train", "medsample-test"]
    row = {"ndcg@10": {"medsample-train": 0.5, "medsample-test": 0.25},
           "tuning_mean": 0.5, "held_out_mean": 0.25}
    out = {"tuning_sets": names[:1], "held_out_sets": names[1:],
           "baseline": {**row, "settings": {"index.fusion": "convex",
                                            "index.fusion_dense_weight": 0.6}},
           "feedback": {**row, "settings": {}, "against_baseline": {},
                        "tuning_sets_agree": True, "held_out_sets_agree": True,
                        "too_few_queries": {}},
           "candidates": [], "chosen": {"name": "rrf k=60", "adopt": False,
                                        "too_few_queries": {},
                                        "settings": {"index.fusion": "rrf", "index.rrf_k": 60},
                                        "against_baseline": {}},
           "corpora": {n: {"read": 10, "skipped": 0, "duplicates": 0, "conflicts": 0}
                       for n in names}}
    monkeypatch.setattr(datasets, "load_dataset", lambda path: SimpleNamespace(
        name=path.name, corpus=CorpusReader(path, CorpusFormat.BEIR)))  # not read: no skips
    monkeypatch.setattr(datasets, "check_servable", lambda dataset, limits: None)
    monkeypatch.setattr(runtime.Encoder, "from_settings", staticmethod(lambda models: None))
    monkeypatch.setattr(fusion_tuning, "tune_fusion", lambda *args: out)
    assert main(["tune", "--tune", str(tmp_path / "a"), "--held-out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out.splitlines()
    header, baseline = printed[:2]
    assert header.split() == ["nDCG@10", *names, "tuning", "held-out"]
    assert baseline.split()[-4:] == ["0.5000", "0.2500", "0.5000", "0.2500"]
    # settings as the variables that set them (a Python dict was printed), the baseline's too
    assert baseline.startswith("baseline (as configured)")  # it said "Qdrant" for any backend
    assert "the baseline: PAPERSEARCH_INDEX__FUSION=convex " \
           "PAPERSEARCH_INDEX__FUSION_DENSE_WEIGHT=0.6" in printed
    assert "chosen on the tuning sets: rrf k=60: PAPERSEARCH_INDEX__FUSION=rrf " \
           "PAPERSEARCH_INDEX__RRF_K=60" in printed
    # each set's corpus read (a paper skipped vanished from the figures unsaid)
    assert "medsample-test corpus: 10 papers read, 0 records skipped, 0 repeats dropped" \
           in printed
