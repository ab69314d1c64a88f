"""End-to-end colorize-dir benchmark on generated 1080p grayscale JPEGs (engine.api.Colorizer.colorize_dir).

    .venv/bin/python benchmarks/pipeline.py --model runs/x/checkpoint.pt \\
        --backends onnxruntime,onnxruntime-int8 --sizes 224 --batch-sizes 8 --files 50,500 \\
        --json benchmarks/results/pipeline.json --markdown benchmarks/results/pipeline.md

Each (backend, size, batch, files) is one fresh process: images/s, model-only images/s
measured in that process at the input shape colorize-dir feeds the model (and at
size x size when that differs), the share between them, time per stage, how busy the
cores and the inference, reader and writer threads were, what the cores allow (CPU time
per photo) and peak RSS. Prints PASS/FAIL against the targets (share >= 90 %, also of
what the cores allow; peak RSS < 2.5 GiB at 512 px batch 8; flat RSS from the smallest
to the largest file count; on a GPU the limiting stage busy >= 90 %).

On a GPU server: ``--device cuda --backends tensorrt --batch-sizes 32`` (the engine is
built from the FP32 export, as in throughput.py); without a GPU, tensorrt is listed as
skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, pipeline_run, report  # noqa: E402
from engine.core.errors import ColorizerError  # noqa: E402

log = logging.getLogger("benchmarks.pipeline")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help=f"training checkpoint (default {common.DEFAULT_MODEL})")
    p.add_argument("--onnx", action="append", metavar="PRECISION=PATH", help="use this export (repeatable)")
    p.add_argument("--backends", default="onnxruntime,onnxruntime-int8", help="comma-separated (see throughput.py)")
    p.add_argument("--sizes", default="224")
    p.add_argument("--batch-sizes", default="8")
    p.add_argument("--files", default="50,500", help="folder sizes to run (memory must stay flat between them)")
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--device", default="cpu")
    p.add_argument("--padding", choices=["auto", "square", "tight"], default="auto",
                   help="model input padding (colorize-dir --padding; auto: tight on a CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU inference threads (default: physical cores)")
    p.add_argument("--io-threads", type=int, nargs=2, default=None, metavar=("READERS", "WRITERS"))
    p.add_argument("--io-nice", type=int, default=None, help="nice increment of decode/encode threads (default: engine's)")
    p.add_argument("--huge-pages", action="store_true",
                   help="the runs' processes ask for transparent huge pages (as throughput.py --huge-pages)")
    p.add_argument("--model-seconds", type=float, default=4.0, help="model-only time before and after each run")
    p.add_argument("--repeats", type=int, default=1, help="folder runs per process, each between model-only phases")
    p.add_argument("--cache-dir", type=Path, default=None, help="exports and generated photos (default ~/.cache)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one run, JSON config
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        try:
            print(json.dumps(pipeline_run.worker(json.loads(args.worker))))
        except ColorizerError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("torch", "onnxscript", "onnx_ir", "export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        data = run(args, argv)
    except ColorizerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in report.check_lines(data["checks"]):
        print(line)
    if args.json:
        common.write_json(args.json, data)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report.pipeline_markdown(data), encoding="utf-8")
    return 0


def run(args: argparse.Namespace, argv: list[str] | None) -> dict:
    from benchmarks.photos import photo_folder

    specs = common.parse_backends(args.backends)
    if any(s.artifact == "plan" for s in specs) and args.padding == "tight":
        raise common.BenchmarkError("--padding tight: the tensorrt engine built here takes size x size inputs "
                                    "(use --padding auto or square)")
    if any(s.channels_last is not None for s in specs):  # colorize-dir runs the engine's default torch layout
        raise common.BenchmarkError("--backends: torch-nchw is a throughput.py baseline only (use torch here)")
    sizes = common.parse_list(args.sizes, "sizes", int)
    batches = common.parse_list(args.batch_sizes, "batch-sizes", int)
    counts = common.parse_list(args.files, "files", int)
    onnx = common.parse_onnx_overrides(args.onnx)
    checkpoint = common.check_model(args.model) if common.needs_checkpoint(specs, onnx) or args.model else None
    cache = args.cache_dir or common.default_cache_dir()
    models, skipped = {}, []
    for spec in specs:  # what cannot run here (TensorRT without a GPU) is listed as skipped, with the reason
        device = common.device_for(spec, args.device)
        try:
            models[spec.name] = (common.artifact_for(spec, checkpoint, cache, onnx, sizes, batches), device)
        except ColorizerError as e:
            log.warning("%s skipped: %s", spec.name, e)
            skipped.append({"backend": spec.name, "precision": spec.precision, "device": device, "reason": str(e)})
    if not models:
        raise common.BenchmarkError("no backend can run here: " + "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped))
    if args.huge_pages:
        common.ask_for_huge_pages()  # inherited by each run's process
    machine = common.machine_info()
    runs = []
    for count in counts:
        folder = photo_folder(cache / "photos", count, args.width, args.height)
        for size in sizes:
            for batch in batches:
                for spec in (s for s in specs if s.name in models):
                    model, device = models[spec.name]
                    cfg = {"model": str(model), "engine_backend": spec.engine_backend,
                           "backend": spec.name, "precision": spec.precision, "device": device,
                           "size": size, "batch_size": batch, "threads": args.threads, "io_threads": args.io_threads,
                           "io_nice": args.io_nice,
                           "folder": str(folder), "files": count, "model_seconds": args.model_seconds,
                           "repeats": args.repeats, "padding": args.padding,
                           "photo_shape": [args.height, args.width]}
                    r = pipeline_run.run_config(cfg)
                    runs.append(r)
                    print(f"{spec.name:18s} {size:4d}px batch {batch:3d} {count:5d} files: {r['images_per_s']:7.2f} img/s"
                          f" vs model-only {r['model_only_images_per_s']:7.2f} ({r['share_of_model_only']:.0%}) at"
                          f" {r['model_input'][1]}x{r['model_input'][0]}, {r['square_model_only_images_per_s']:7.2f}"
                          f" ({r['share_of_square_model_only']:.0%}) at {size}x{size},"
                          f" {r['share_of_attainable']:.0%} of the {r['attainable_images_per_s']:.2f} the cores allow,"
                          f" peak RSS {r['peak_rss_mib']:.0f} MiB, busy: cores {r['cpu_busy']:.0%}, "
                          + pipeline_run.busy_text(r["busy"])
                          + ", ms/photo "
                          + " ".join(f"{k} {v['ms_per_photo']:.1f}" for k, v in r["stages"].items()), flush=True)
    machine["load_average_end"] = common.machine_info()["load_average"]
    checks = pipeline_run.share_checks(runs, report.PIPELINE_SHARE_TARGET)
    checks += pipeline_run.memory_checks(runs, report.PEAK_RSS_TARGET_GIB, report.FLAT_RSS_TOLERANCE)
    checks += pipeline_run.busy_checks(runs, report.GPU_BUSY_TARGET)
    return {
        "benchmark": "pipeline",
        "command": "benchmarks/pipeline.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "model": common.shown_model(checkpoint, onnx),
        "photos": f"generated grayscale JPEGs {args.width}x{args.height} (benchmarks.photos, quality 90)",
        "machine": machine,
        "runs": runs,
        "skipped": skipped,
        "checks": checks,
    }


if __name__ == "__main__":
    sys.exit(main())
