"""The versioned ONNX model repository (manifest), the shared ONNX runtime and its int8 parity
self-check. Imports nothing from encoder/, reranker/ or modelbuild/ (tests/test_layout.py)."""
