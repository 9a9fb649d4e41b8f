"""Model sources, the versioned ONNX model repository, export and the shared ONNX runtime."""
