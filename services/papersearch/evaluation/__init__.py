"""Retrieval evaluation: ranking-quality metrics and BEIR topic (queries, qrels) loading."""
