"""Cross-encoder reranker: runtime, its loader, rank fusion and its Serve deployment (training:
modelbuild/)."""
