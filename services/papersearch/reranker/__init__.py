"""Cross-encoder reranker: runtime, weakly supervised training, and its Serve deployment."""
