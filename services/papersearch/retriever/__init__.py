"""Retrieval: a query (text + dense vector) -> ranked papers from the index."""
