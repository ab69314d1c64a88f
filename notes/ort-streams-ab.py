"""A/B of ONNX Runtime streams (notes/ort-streams.md): .venv/bin/python notes/ort-streams-ab.py MODEL.onnx [HxW]."""
import sys, time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.backends.ort import OrtRunner
from benchmarks.photos import model_batch
model = sys.argv[1]; shape = (224, 224) if len(sys.argv) < 3 else tuple(map(int, sys.argv[2].split("x")))
x = model_batch(8, shape, seed=1)
a = OrtRunner(model, streams=1).activate(); b = OrtRunner(model).activate()
print(b.describe())
ua = a.infer(x, outputs=("uv",))["uv"]; ub = b.infer(x, outputs=("uv",))["uv"]
print("max diff", np.abs(ua - ub).max())
res = {"streams=1": [], "default": []}
for r in range(10):
    for name, rr in (("streams=1", a), ("default", b)) if r % 2 else (("default", b), ("streams=1", a)):
        t = time.perf_counter(); rr.infer(x, outputs=("uv",)); rr.infer(x, outputs=("uv",)); res[name].append(16 / (time.perf_counter() - t))
for k, v in res.items(): print(model.split('/')[-1], shape, k, "median %.2f" % np.median(v), [round(q, 1) for q in v])
r = [b_/a_ for a_, b_ in zip(res["streams=1"], res["default"])]; print("per-round ratio median %.3f" % np.median(r))
