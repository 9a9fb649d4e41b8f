"""Making the model repository: sources, ONNX export, hard-negative mining, reranker training,
and `papersearch models info`.

Tooling only: it imports torch and transformers (export, training) and builds on models/,
encoder/ and reranker/; nothing that serves imports it (tests/test_layout.py).
"""
