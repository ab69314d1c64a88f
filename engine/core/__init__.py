"""The core every part imports: colour spec, I/O contract, errors, metrics, file helpers, hardware probing.

Imports nothing of the project (``tests/test_layers.py``).
"""
