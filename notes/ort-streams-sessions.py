"""Raw ONNX Runtime sessions: one 2-thread session vs two 1-thread sessions side by side (notes/ort-streams.md).

    SPIN=0 .venv/bin/python notes/ort-streams-sessions.py models/colorizer-int8.onnx [HxW]
"""
import sys, threading, time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import onnxruntime as ort
from benchmarks.photos import model_batch
import os; SPIN = os.environ.get("SPIN", "0"); model = sys.argv[1]; shape = (224, 224) if len(sys.argv) < 3 else tuple(map(int, sys.argv[2].split("x")))
x = model_batch(8, shape, seed=1)
def sess(threads):
    so = ort.SessionOptions(); so.intra_op_num_threads = threads; so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", SPIN)
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
s2 = sess(2); a = sess(1); b = sess(1)
def run(s, imgs):
    for i in imgs: s.run(["uv"], {"gray": x[i:i+1]})
def one():
    run(s2, range(8))
def two():
    t1 = threading.Thread(target=run, args=(a, range(0, 8, 2))); t2 = threading.Thread(target=run, args=(b, range(1, 8, 2)))
    t1.start(); t2.start(); t1.join(); t2.join()
for f in (one, two): f()
res = {"1x2threads": [], "2x1thread": []}
for r in range(10):
    for name, f in (("1x2threads", one), ("2x1thread", two)):
        t = time.perf_counter(); f(); f(); res[name].append(16 / (time.perf_counter() - t))
for k, v in res.items(): print(model.split('/')[-1], shape, k, "median %.2f" % np.median(v), [round(q, 1) for q in v])
