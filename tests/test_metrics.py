"""Ranking metrics (nDCG, recall, MRR), evaluate() and the BEIR topic loaders."""

from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path

import pytest

from papersearch.corpus.jsonl import MAX_LINE_BYTES
from papersearch.corpus.readers import CorpusFormat, CorpusReader
from papersearch.evaluation.beir import load_qrels, read_queries
from papersearch.evaluation.datasets import (
    EvalDataset,
    check_judged_documents,
    check_servable,
    judged_queries,
    load_dataset,
    skipped_records,
)
from papersearch.evaluation.metrics import (
    Report,
    evaluate,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    top_k,
)

EVAL = Path(__file__).resolve().parents[1].parent / "shared" / "eval"

RANKED = ["d3", "d1", "d7", "d2"]
QRELS = {"d1": 2, "d2": 1, "d9": 1}


def query_texts(dataset_dir: Path) -> dict[str, str]:
    return {query_id: text for query_id, (text, _) in read_queries(dataset_dir).items()}


def test_ndcg_hand_computed() -> None:
    # Gains by rank: d3 → 0, d1 → 2, d7 → 0, d2 → 1; discount log2(rank + 1).
    # log2(2) = 1, log2(3) = 1.5849625, log2(4) = 2, log2(5) = 2.3219281.
    # DCG  = 0/1 + 2/1.5849625 + 0/2 + 1/2.3219281 = 1.2618595 + 0.4306766 = 1.6925361
    # IDCG = ideal gains 2, 1, 1: 2/1 + 1/1.5849625 + 1/2 = 2 + 0.6309298 + 0.5 = 3.1309298
    # nDCG@10 = 1.6925361 / 3.1309298 = 0.5405858
    assert ndcg_at_k(RANKED, QRELS) == pytest.approx(0.5405858, abs=1e-6)
    # k = 3 drops d2: DCG = 1.2618595, IDCG unchanged (3 relevant) → 0.4030303
    assert ndcg_at_k(RANKED, QRELS, k=3) == pytest.approx(0.4030303, abs=1e-6)
    # k = 2: DCG = 1.2618595, IDCG = 2 + 0.6309298 = 2.6309298 → 0.4796249
    assert ndcg_at_k(RANKED, QRELS, k=2) == pytest.approx(0.4796249, abs=1e-6)


def test_recall_and_mrr_hand_computed() -> None:
    assert recall_at_k(RANKED, QRELS) == pytest.approx(2 / 3)  # d1, d2 of d1, d2, d9
    assert recall_at_k(RANKED, QRELS, k=2) == pytest.approx(1 / 3)
    assert mrr_at_k(RANKED, QRELS) == pytest.approx(1 / 2)  # d1 at rank 2
    assert mrr_at_k(RANKED, QRELS, k=1) == 0.0


def test_nothing_relevant_retrieved_scores_zero() -> None:
    ranked = ["x", "y", "z"]
    assert ndcg_at_k(ranked, QRELS) == 0.0
    assert recall_at_k(ranked, QRELS) == 0.0
    assert mrr_at_k(ranked, QRELS) == 0.0
    assert ndcg_at_k([], QRELS) == 0.0


def test_no_relevant_judgments_scores_zero() -> None:
    qrels = {"d1": 0, "d2": -1}
    assert ndcg_at_k(["d1", "d2"], qrels) == 0.0
    assert recall_at_k(["d1", "d2"], qrels) == 0.0
    assert mrr_at_k(["d1", "d2"], qrels) == 0.0


def test_perfect_ranking_scores_one() -> None:
    ranked = ["d1", "d2", "d9", "x"]
    assert ndcg_at_k(ranked, QRELS) == pytest.approx(1.0)
    assert recall_at_k(ranked, QRELS) == pytest.approx(1.0)
    assert mrr_at_k(ranked, QRELS) == 1.0
    # Ties among equal grades do not matter.
    assert ndcg_at_k(["d1", "d9", "d2"], QRELS) == pytest.approx(1.0)


def test_ideal_dcg_is_cut_at_k() -> None:
    qrels = {f"d{i}": 1 for i in range(20)}
    assert ndcg_at_k([f"d{i}" for i in range(10)], qrels) == pytest.approx(1.0)
    assert recall_at_k([f"d{i}" for i in range(10)], qrels) == pytest.approx(0.5)


def test_negative_and_zero_grades_give_no_gain() -> None:
    qrels = {"bad": -2, "zero": 0, "good": 1}
    assert ndcg_at_k(["bad", "zero", "good"], qrels) == pytest.approx(0.5)  # 1 / log2(4)
    assert mrr_at_k(["bad", "zero", "good"], qrels) == pytest.approx(1 / 3)


def test_duplicates_count_once() -> None:
    # Deduplicated to [d1, d3, d2]: the repeat neither adds gain nor takes a slot in the top k.
    ranked = ["d1", "d1", "d3", "d1", "d2"]
    assert ndcg_at_k(ranked, QRELS, k=3) == pytest.approx(ndcg_at_k(["d1", "d3", "d2"], QRELS, k=3))
    assert recall_at_k(ranked, QRELS, k=3) == pytest.approx(2 / 3)
    assert ndcg_at_k(["d1"] * 5, {"d1": 1}) == pytest.approx(1.0)
    assert top_k(ranked, 2) == ["d1", "d3"]


def test_k_must_be_positive() -> None:
    for metric in (ndcg_at_k, recall_at_k, mrr_at_k):
        with pytest.raises(ValueError, match="k must be at least 1"):
            metric(RANKED, QRELS, k=0)


def test_evaluate_averages_and_skips() -> None:
    run = {"q1": RANKED, "q2": ["d1", "d2", "d9"], "q3": ["a"], "extra": ["d1"]}
    qrels = {
        "q1": QRELS,
        "q2": QRELS,
        "q3": {"a": 0},  # no relevant judgment: skipped
        "q4": {"b": 1},  # missing from the run: scores 0
    }
    report = evaluate(run, qrels)
    assert report.queries == 3
    # q3 and "extra", run without a relevant judgment, as `eval` counts them (it said 0 in its
    # JSON beside "4 queries, 3 scored (1 without a relevant judgment)")
    assert report.skipped_queries == 2
    assert report.per_query_ndcg_at_10 == pytest.approx({"q1": 0.5405858, "q2": 1.0, "q4": 0.0})
    assert report.ndcg_at_10 == pytest.approx((0.5405858 + 1.0 + 0.0) / 3, abs=1e-6)
    assert report.recall_at_100 == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert report.mrr_at_10 == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_evaluate_nothing_to_evaluate() -> None:
    report = evaluate({}, {"q": {"d": 0}})
    assert report == Report(0.0, 0.0, 0.0, queries=0, skipped_queries=1, per_query_ndcg_at_10={})


def test_report_to_dict_is_json_ready() -> None:
    data = evaluate({"q1": RANKED}, {"q1": QRELS}).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {
        "ndcg@10",
        "recall@100",
        "mrr@10",
        "queries",
        "skipped_queries",
        "ms_per_query",
        "per_query_ndcg@10",
    }
    assert data["per_query_ndcg@10"] == {"q1": pytest.approx(0.5405858)}
    assert data["ms_per_query"] is None  # evaluate() times nothing; run_eval fills it in


def write_dataset(root: Path, queries: str, qrels: str, split: str = "test") -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "queries.jsonl").write_text(queries, encoding="utf-8")
    (root / "qrels" / f"{split}.tsv").write_text(qrels, encoding="utf-8")
    return root


def test_loaders_read_beir_files(tmp_path: Path) -> None:
    queries = (
        '{"_id": "1", "text": " first query "}\n\n{"_id": 2, "text": "second", "metadata": {}}'
    )
    # The last line has no newline; blank lines and CRLF are tolerated.
    qrels = "query-id\tcorpus-id\tscore\n1\td1\t2\n1\td2\t0\r\n\n2\td1\t1\n"
    root = write_dataset(tmp_path, queries, qrels, split="dev")
    assert query_texts(root) == {"1": "first query", "2": "second"}
    assert load_qrels(root, split="dev") == {"1": {"d1": 2, "d2": 0}, "2": {"d1": 1}}


def test_query_texts_are_cleaned_as_the_service_cleans_a_query(tmp_path: Path) -> None:
    """eval and tune searched a query's text as read: a soft hyphen or a zero-width space in
    it made BM25 terms the served query (SearchQuery.validate: clean_text) does not have."""
    queries = json.dumps({"_id": "1", "text": "hyphen\u00adation of trans\u00adformer "
                                              "at\u200btention\n"}) + "\n" + json.dumps(
        {"_id": "2", "text": "\u200b\u00ad"})
    root = write_dataset(tmp_path, queries, "1\td1\t1\n")
    with pytest.raises(ValueError, match=r"queries\.jsonl:2: missing or empty 'text'"):
        query_texts(root)
    (root / "queries.jsonl").write_text(queries.splitlines()[0], encoding="utf-8")
    assert query_texts(root) == {"1": "hyphenation of transformer attention"}


def test_qrels_ids_are_normalised_as_the_corpus_and_query_ids_are(tmp_path: Path) -> None:
    """An NFD id (café as e + U+0301) in all three files: the corpus and the queries store it
    NFC, so qrels kept verbatim judged nothing, and a perfect run scored 0."""
    cafe = "cafe\u0301-1"
    root = write_dataset(tmp_path, json.dumps({"_id": cafe, "text": "coffee"}),
                         f"{cafe}\t{cafe}\t1\n")
    nfc = unicodedata.normalize("NFC", cafe)
    assert nfc != cafe and query_texts(root) == {nfc: "coffee"}
    assert load_qrels(root) == {nfc: {nfc: 1}}


def test_qrels_header_is_optional(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, "", "1\td1\t1\n")
    assert load_qrels(root) == {"1": {"d1": 1}}


def test_a_byte_order_mark_and_another_header_naming_are_read(tmp_path: Path) -> None:
    """Files saved by Excel or Notepad start with a BOM (queries failed as invalid JSON, qrels
    with "score must be an integer, got 'score'"); a header naming the columns otherwise was
    refused the same way."""
    root = write_dataset(tmp_path / "bom", '\ufeff{"_id": "1", "text": "a"}\n',
                         "\ufeffquery-id\tcorpus-id\tscore\n1\td1\t1\n")
    assert query_texts(root) == {"1": "a"} and load_qrels(root) == {"1": {"d1": 1}}
    root = write_dataset(tmp_path / "named", "", "query_id\tdoc_id\trelevance\n1\td1\t1\n")
    assert load_qrels(root) == {"1": {"d1": 1}}
    # after a blank line (it failed: "score must be an integer, got 'score'")
    root = write_dataset(tmp_path / "blank", "", "\nquery-id\tcorpus-id\tscore\n1\td1\t1\n")
    assert load_qrels(root) == {"1": {"d1": 1}}


def test_a_byte_order_mark_is_read_past_on_any_line(tmp_path: Path) -> None:
    """Files joined with cat keep each one's BOM: line 2 failed as "invalid JSON: Unexpected
    UTF-8 BOM", and a qrels line's query id kept it (judging a query that is not there)."""
    root = write_dataset(tmp_path, '{"_id": "1", "text": "a"}\n\ufeff{"_id": "2", "text": "b"}\n',
                         "query-id\tcorpus-id\tscore\n1\td1\t1\n\ufeff2\td2\t1\n")
    assert query_texts(root) == {"1": "a", "2": "b"}
    assert load_qrels(root) == {"1": {"d1": 1}, "2": {"d2": 1}}


# any naming: "query-id passage-id score" (MS MARCO's) failed as "score must be an integer,
# got 'score'", though the README said a header could name the columns as it would
@pytest.mark.parametrize("header", ["query-id\tcorpus-id\tscore", "Query-ID\tCorpus-ID\tScore",
                                    "qid\tdocno\tlabel", "query id\tdoc id\tgrade",
                                    "query-id\tpassage-id\tscore", "topic\tpaper\trelevant?",
                                    "query-id\td1\thigh"])
def test_a_header_names_the_columns(tmp_path: Path, header: str) -> None:
    root = write_dataset(tmp_path, "", f"{header}\n1\td1\t1\n")
    assert load_qrels(root) == {"1": {"d1": 1}}


def test_judgments_must_name_documents_of_the_corpus(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, embedder_dir: Path,
) -> None:
    """qrels naming 'MED-13' against a corpus of '13' gave 0.0000 for every mode, exit 0 and
    no word; one judged id missing lowered every figure as quietly."""
    from papersearch.encoder.runtime import Encoder
    from papersearch.evaluation.harness import open_dataset_index
    from papersearch.settings import Settings

    dataset = EvalDataset("set", list, {"q1": "a", "q2": "b"},
                          {"q1": {"d1": 1, "d9": 2, "d8": 0}, "q2": {"d2": 1}},
                          CorpusReader(tmp_path, CorpusFormat.BEIR))
    with caplog.at_level(logging.WARNING, logger="papersearch.evaluation.datasets"):
        check_judged_documents(dataset, {"d1", "d2"})
    # its own records only: a thread another test left (Ray Data's metrics poller) logs too
    (record,) = [r for r in caplog.records if r.name == "papersearch.evaluation.datasets"]
    assert "score as misses" in record.message and (record.documents, record.of) == (1, 3)
    with pytest.raises(ValueError, match=r"set: none of the 3 documents judged relevant is in "
                                         r"its corpus \(e.g. 'd1' against '13'\)"):
        check_judged_documents(dataset, {"13", "14"})
    # every command that opens a set's index checks it, before anything is ingested
    root = write_dataset(tmp_path / "med", '{"_id": "1", "text": "a"}\n', "1\tMED-13\t1\n")
    (root / "corpus.jsonl").write_text('{"_id": "13", "title": "T", "text": "x"}\n')
    settings = Settings(eval_dir=tmp_path / "eval")
    with pytest.raises(ValueError, match="none of the 1 documents judged relevant"):
        open_dataset_index(load_dataset(root), settings, Encoder(embedder_dir))
    assert not (tmp_path / "eval").exists()


def test_a_corpus_that_yields_no_papers_is_said_as_such(
    tmp_path: Path, embedder_dir: Path,
) -> None:
    """An empty corpus.jsonl, or one whose every record was skipped, was blamed on the ids:
    "none of the 1 documents judged relevant is in its corpus ... must use the same ids"."""
    from papersearch.encoder.runtime import Encoder
    from papersearch.evaluation.harness import open_dataset_index
    from papersearch.settings import Settings

    root = write_dataset(tmp_path / "set", '{"_id": "1", "text": "a"}\n', "1\td1\t1\n")
    settings, encoder = Settings(eval_dir=tmp_path / "eval"), Encoder(embedder_dir)
    for corpus in ("", "\n  \n"):
        (root / "corpus.jsonl").write_text(corpus)
        with pytest.raises(ValueError, match=r"^set: its corpus yielded no papers \(it holds no "
                                             r"records\)$"):
            open_dataset_index(load_dataset(root), settings, encoder)
    (root / "corpus.jsonl").write_text('{"_id": "d1", "title": "T", "abstract": "x"}\n'
                                       '{"_id": "d2", "title": "T", "metadata": []}\n')
    with pytest.raises(ValueError, match=r"^set: its corpus yielded no papers \(2 records "
                                         r"skipped; the first: .+/corpus\.jsonl:1: no 'text'"):
        open_dataset_index(load_dataset(root), settings, encoder)
    # papers, but not the judged one, which was skipped: the skip is said beside the ids
    (root / "corpus.jsonl").write_text('{"_id": "d1", "title": "T", "abstract": "x"}\n'
                                       '{"_id": "d2", "title": "T", "text": "y"}\n')
    with pytest.raises(ValueError, match=r"must use the same ids \(1 records skipped; the "
                                         r"first: .+/corpus\.jsonl:1: no 'text'"):
        open_dataset_index(load_dataset(root), settings, encoder)
    assert not (tmp_path / "eval").exists()


def test_skipped_records_are_listed_the_first_few_then_counted(tmp_path: Path) -> None:
    """eval listed no skipped record: a paper with a non-ISO date vanished from the metrics
    with a log line, and a conflicting repeat's warning pointed to a list eval never showed."""
    records = [{"_id": f"d{n}", "title": "T", "text": "x", "metadata": {"published": "1958"}}
               for n in range(3)]
    records += [{"_id": f"d{n}", "title": "T", "text": "x", "metadata": {"published": "Dec"}}
                for n in range(3, 9)]
    records.append({"_id": "d0", "title": "Another", "text": "x"})  # a conflict, line 10
    root = write_dataset(tmp_path / "set", '{"_id": "1", "text": "a"}\n', "1\td0\t1\n")
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    dataset = load_dataset(root)
    assert skipped_records(dataset) == []  # nothing read yet
    assert [p.id for p in dataset.papers()] == ["d0", "d1", "d2"]
    listed = skipped_records(dataset, shown=3)
    assert listed[0] == (f"{root}/corpus.jsonl:4: 'published' is not an ISO date (YYYY-MM-DD, "
                         "YYYY-MM or YYYY): 'Dec'")
    assert [line.split(": ")[0] for line in listed[:3]] == [
        f"{root}/corpus.jsonl:{n}" for n in (4, 5, 6)]
    assert listed[3:] == ["... and 4 more"]  # 6 skipped and 1 conflict in all
    assert skipped_records(dataset)[-2:] == [
        f"{root}/corpus.jsonl:8: 'published' is not an ISO date (YYYY-MM-DD, YYYY-MM or YYYY): "
        "'Dec'", "... and 2 more"]


def test_an_eval_dir_that_cannot_be_made_names_its_setting(
    tmp_path: Path, embedder_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An eval_dir this process may not write in was said as index.data_dir's (the index's
    own message), a setting eval does not use."""
    from papersearch.encoder.runtime import Encoder
    from papersearch.evaluation import harness
    from papersearch.index.errors import StoreError
    from papersearch.settings import Settings

    root = write_dataset(tmp_path / "med", '{"_id": "1", "text": "a"}\n', "1\t13\t1\n")
    (root / "corpus.jsonl").write_text('{"_id": "13", "title": "T", "text": "x"}\n')
    dataset, encoder = load_dataset(root), Encoder(embedder_dir)
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match=r"file is there but not a folder \(eval_dir, "
                                         r"PAPERSEARCH_EVAL_DIR; "):
        harness.open_dataset_index(dataset, Settings(eval_dir=tmp_path / "file" / "eval"),
                                   encoder)
    # root (the CI) passes every permission check: refused as an unprivileged user is
    monkeypatch.setattr(harness.os, "access", lambda *args: False)
    with pytest.raises(StoreError, match=r"eval collections' folder .*eval is not this "
                                         r"process's to write in \(eval_dir, "):
        harness.open_dataset_index(dataset, Settings(eval_dir=tmp_path / "eval"), encoder)


def test_queries_the_service_refuses_are_not_measured(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """eval scored a query longer than search.max_query_chars, which the gateway and
    `papersearch search` refuse (INVALID_ARGUMENT): a figure for answers nobody gets."""
    from papersearch import cli
    from papersearch.settings import SearchSettings

    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "x"}\n')
    long = "graph neural networks " * 100  # 2,200 characters as written, 2,199 cleaned
    queries = (json.dumps({"_id": "q1", "text": long}) + "\n"
               + json.dumps({"_id": "q2", "text": "graphs"}) + "\n")
    dataset = load_dataset(write_dataset(tmp_path, queries, "q1\td1\t1\nq2\td1\t1\n"))
    with pytest.raises(ValueError, match=r"1 of its queries are longer than search.max_query_"
                                         r"chars=2048, which the service refuses: 'q1' \(2200 "):
        check_servable(dataset, SearchSettings())
    check_servable(dataset, SearchSettings(max_query_chars=2200))
    with pytest.raises(ValueError, match=r"'q1' \(2200 characters\)"):  # as written
        check_servable(dataset, SearchSettings(max_query_chars=2199))
    for command in (["eval", "--dataset", str(tmp_path)],
                    ["tune-rerank", "--dataset", str(tmp_path)]):
        assert cli.main(command) == 2  # before any model or index is opened
        assert "longer than search.max_query_chars=2048" in capsys.readouterr().err


def test_judgments_must_name_the_queries_they_judge(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Judgments of ids missing from queries.jsonl scored 0 each, silently: an id typo ('q1'
    against '1') looked like a broken model."""
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "x"}\n')
    queries = '{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "b"}\n'
    root = write_dataset(tmp_path, queries, "1\td1\t1\n2\td1\t1\n")
    with pytest.raises(ValueError,
                       match=r"none of the 2 query ids judged .+ \(e.g. '1' against 'q1'\)"):
        load_dataset(root)
    (root / "qrels" / "test.tsv").write_text("q1\td1\t1\nq2\td1\t0\n3\td1\t1\n")
    with caplog.at_level(logging.WARNING, logger="papersearch.evaluation.datasets"):
        dataset = load_dataset(root)
    assert dict(dataset.qrels) == {"q1": {"d1": 1}, "q2": {"d1": 0}}
    assert "judgments of unknown queries left out" in caplog.text
    assert judged_queries(dataset) == 1  # q2 has no relevant judgment: run, not scored
    # no relevant judgment at all: every metric 0, every candidate a tie (eval printed 0.0000)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t0\n")
    with pytest.raises(ValueError, match="no query has a relevant judgment"):
        load_dataset(root)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(ValueError, match="no query has a relevant judgment"):
        load_dataset(root)
    # the set's corpus.jsonl named instead of its folder: its titles were the known items
    with pytest.raises(ValueError, match="is a BEIR set's file: give its folder"):
        load_dataset(root / "corpus.jsonl")
    # a BEIR-format file of its own, nothing judged beside it: its known-item set, as before
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "papers.jsonl").write_text('{"_id": "d1", "title": "A title", "text": "x"}\n')
    assert load_dataset(alone / "papers.jsonl").name.endswith("known-item")
    (alone / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no paper with both a title and an abstract"):
        load_dataset(alone / "empty.jsonl")
    (alone / "bad.jsonl").write_text('{"_id": "d1", "title": "A title", "metadata": 1}\n')
    with pytest.raises(ValueError, match=r"no paper with both .+ to run \(1 records skipped; the "
                                         r"first: .+bad\.jsonl:1: 'metadata' must be an object"):
        load_dataset(alone / "bad.jsonl")
    (root / "queries.jsonl").write_text("\n")  # a StopIteration traceback
    with pytest.raises(ValueError, match="queries.jsonl holds no queries"):
        load_dataset(root)
    (root / "queries.jsonl").rename(root / "topics.jsonl")
    with pytest.raises(FileNotFoundError, match="has qrels/ but no queries.jsonl"):
        load_dataset(root)  # was read as a known-item set without a word


@pytest.mark.parametrize(
    ("qrels", "message"),
    [
        ("query-id\tcorpus-id\tscore\n1\td1\n", r"test\.tsv:2: expected"),
        ("1\td1\t1\textra\n", r"test\.tsv:1: expected"),
        ("1 d1 1\n", r"test\.tsv:1: expected"),
        ("1\t\t1\n", r"test\.tsv:1: expected"),
        ("1\td1\t1\n1\td2\thigh\n", r"test\.tsv:2: score must be an integer"),
        ("\n1\td1\t1.0\n", r"test\.tsv:2: score must be an integer, got '1\.0'"),
        ("1\td1\t1\nquery-id\tcorpus-id\tscore\n", r"test\.tsv:2: score must be an integer"),
        ("1\td1\t1\n1\td1\t2\n", r"test\.tsv:2: conflicting score"),
        # int() took these: 10 and 3
        ("1\td1\t1_0\n", r"test\.tsv:1: score must be an integer, got '1_0'"),
        ("1\td1\t\u0663\n", r"test\.tsv:1: score must be an integer, got '\u0663'"),
        ("1\td1\t+\n", r"test\.tsv:1: score must be an integer"),
        # a first judgment with a mistyped grade was skipped as a header, without a word
        ("q1\td1\thigh\nq1\td2\t1\n",
         r"test\.tsv:1: score must be an integer, got 'high' \(a header line names the columns"),
        ("\nq1\td1\t1.0\n", r"test\.tsv:2: score must be an integer, got '1\.0' \(a header"),
        # a number is a judgment's score, whatever its form: not taken as a header
        ("q1\td1\t1e0\nq1\td2\t1\n", r"test\.tsv:1: score must be an integer, got '1e0'"),
        # a file with CR line endings reads as one line: cut, not echoed whole
        ("q1\td1\t1\r" * 2000, r"test\.tsv:1: expected 'query-id<TAB>corpus-id<TAB>score', "
                               r"got 'q1\\td1\\t1\\rq1[^.]+'\.\.\. \(15999 characters\)$"),
    ],
)
def test_malformed_qrels(tmp_path: Path, qrels: str, message: str) -> None:
    root = write_dataset(tmp_path, "", qrels)
    with pytest.raises(ValueError, match=message):
        load_qrels(root)


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        ('{"_id": "1", "text": "a"}\n{"_id": "2", "text": \n', r"queries\.jsonl:2: invalid JSON"),
        ('["1", "a"]\n', r"queries\.jsonl:1: expected a JSON object"),
        ('{"text": "a"}\n', r"queries\.jsonl:1: missing or empty '_id'"),
        ('{"_id": "1", "text": "  "}\n', r"queries\.jsonl:1: missing or empty 'text'"),
        ('{"_id": "1", "text": "a"}\n{"_id": "1", "text": "b"}\n', r"queries\.jsonl:2: duplicate"),
    ],
)
def test_malformed_queries(tmp_path: Path, queries: str, message: str) -> None:
    root = write_dataset(tmp_path, queries, "")
    with pytest.raises(ValueError, match=message):
        query_texts(root)


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, "", "")
    (root / "qrels" / "test.tsv").write_bytes(b"1\td1\t1\n1\td\xff\t1\n")
    with pytest.raises(ValueError, match=r"test\.tsv:2: invalid UTF-8"):
        load_qrels(root)


def test_a_line_past_the_limit_is_refused_by_number(tmp_path: Path) -> None:
    root = write_dataset(tmp_path, '{"_id": "1", "text": "a"}\n', "")
    with (root / "queries.jsonl").open("a") as queries:
        queries.write(json.dumps({"_id": "2", "text": "x" * MAX_LINE_BYTES}) + "\n")
    with pytest.raises(ValueError, match=rf"queries\.jsonl:2: line longer than {MAX_LINE_BYTES}"):
        query_texts(root)


def test_missing_files_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="queries.jsonl"):
        query_texts(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"qrels/train\.tsv"):
        load_qrels(tmp_path, split="train")
    # other splits there: named, and the one read said ("no such file: .../test.tsv" alone)
    write_dataset(tmp_path, "", "1\td1\t1\n", split="dev")
    (tmp_path / "qrels" / "train.tsv").write_text("1\td1\t1\n")
    with pytest.raises(FileNotFoundError, match=r"qrels/test\.tsv \(the split read: `papersearch "
                                                r"eval` and `tune` judge on test\.tsv\); .+/qrels "
                                                r"holds dev\.tsv, train\.tsv: copy or rename"):
        load_qrels(tmp_path)


@pytest.mark.parametrize(
    ("name", "queries", "judged", "judgments"),
    [("med", 30, 30, 696), ("cacm", 64, 52, 796)],
)
def test_real_datasets(name: str, queries: int, judged: int, judgments: int) -> None:
    dataset = EVAL / name
    if not dataset.is_dir():
        pytest.skip(f"{dataset} is not available")
    topics = query_texts(dataset)
    qrels = load_qrels(dataset)
    assert len(topics) == queries
    assert len(qrels) == judged
    assert sum(map(len, qrels.values())) == judgments
    assert qrels.keys() <= topics.keys()
    # Judging the qrels against themselves is a perfect run.
    run = {query: sorted(docs, key=docs.__getitem__, reverse=True) for query, docs in qrels.items()}
    report = evaluate(run, qrels)
    assert (report.queries, report.skipped_queries) == (judged, 0)
    assert report.ndcg_at_10 == pytest.approx(1.0)
    assert report.mrr_at_10 == pytest.approx(1.0)
