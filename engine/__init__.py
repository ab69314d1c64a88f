"""Batch colorization engine: runs exported artifacts (ONNX / TensorRT engine + JSON sidecar). Imports no torch.

Sub-packages: ``engine.core`` (colour spec, I/O contract, errors, metrics, file helpers, hardware),
``engine.net`` (the network, its export wrapper, checkpoints), ``engine.backends`` (the runners);
the modules here are the runtime (docs/architecture.md).
"""

__version__ = "0.2.0"
