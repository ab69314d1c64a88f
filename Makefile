# Two set-up commands: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: install demo test test-gpu bench bench-gpu clean

# make demo: the package alone (ONNX Runtime on the CPU, image I/O, the CLI): no torch, no Ray.
$(DEMO_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e .
	touch $(DEMO_STAMP)

# make test: everything else too. torch is pinned so pip takes the CPU wheel, not a multi-GB CUDA build.
$(STAMP): $(DEMO_STAMP)
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[train,dev,cluster,video]'
	touch $(STAMP)

install: $(STAMP)

demo: $(DEMO_STAMP)
	$(PY) cli.py demo

test: $(STAMP)
	$(PY) -m pytest -q

# GPU servers: .venv set up by hand (docs/gpu-servers.md); no $(STAMP) here, its CPU torch would replace CUDA's.
test-gpu:
	$(PY) -m pytest -q -m gpu

# Model-only images/s of every backend (TensorRT is listed as skipped without a GPU), the 224 px batch 8 targets
# again with every process on transparent huge pages (PyTorch's speed depends on them),
# then colorize-dir end to end on 50 and 500 generated 1080p JPEGs, then the chart and the three tables of
# docs/performance.md (between their markers); each folder run three times in its process (the median is reported:
# a short run is noisy). Results in benchmarks/results/.
BENCH_BACKENDS ?= torch,torch-nchw,onnxruntime,onnxruntime-int8,tensorrt
bench: $(STAMP)
	$(PY) benchmarks/throughput.py --backends $(BENCH_BACKENDS) --sizes 224,512 --batch-sizes 1,8 --rounds 5 \
	    --json benchmarks/results/throughput.json --markdown benchmarks/results/throughput.md
	$(PY) benchmarks/throughput.py --backends torch,onnxruntime,onnxruntime-int8 --sizes 224 --batch-sizes 8 --rounds 5 \
	    --huge-pages --json benchmarks/results/throughput-hugepages.json
	$(PY) benchmarks/pipeline.py --backends onnxruntime,onnxruntime-int8 --sizes 224 --batch-sizes 8 --files 50,500 \
	    --repeats 3 --json benchmarks/results/pipeline.json --markdown benchmarks/results/pipeline.md
	$(PY) benchmarks/plot.py benchmarks/results/throughput.json --png benchmarks/results/throughput.png --doc docs/performance.md
	$(PY) benchmarks/plot.py benchmarks/results/throughput-hugepages.json --doc docs/performance.md --block throughput-hugepages
	$(PY) benchmarks/plot.py benchmarks/results/pipeline.json --doc docs/performance.md

# On a GPU server, after the GPU packages (docs/gpu-servers.md; no $(STAMP) either): the GPU targets. TensorRT FP16 against PyTorch
# FP32 eager on the same GPU at 224 px, batch 32; then colorize-dir with TensorRT on 500 and 2000 generated 1080p
# JPEGs (is the GPU or the CPU the limit, and is the limiting stage kept busy). Fails with the reason without a GPU.
bench-gpu:
	$(PY) benchmarks/throughput.py --device cuda --backends torch,tensorrt --sizes 224 --batch-sizes 32 --rounds 5 \
	    --json benchmarks/results/throughput-gpu.json --markdown benchmarks/results/throughput-gpu.md
	$(PY) benchmarks/pipeline.py --device cuda --backends tensorrt --sizes 224 --batch-sizes 32 --files 500,2000 \
	    --json benchmarks/results/pipeline-gpu.json --markdown benchmarks/results/pipeline-gpu.md

clean:
	rm -rf $(VENV) out .pytest_cache
