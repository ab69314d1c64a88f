"""Batch colorization engine: runs exported artifacts (ONNX / TensorRT engine + JSON sidecar). Imports no torch."""
