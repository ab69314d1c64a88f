"""Model-only throughput (images/s) of the engine's backends, interleaved round by round.

    .venv/bin/python benchmarks/throughput.py --model runs/x/checkpoint.pt \\
        --backends torch,onnxruntime,onnxruntime-int8 --sizes 224,512 --batch-sizes 1,8 \\
        --json benchmarks/results/throughput.json --markdown benchmarks/results/throughput.md

Prints one line per result, then PASS/FAIL against the speed targets
(``benchmarks.report.THROUGHPUT_TARGETS``). Exit code 0 when it measured (whatever
the targets say), 2 on a usage error (e.g. no model).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, measure, report  # noqa: E402
from engine.core.errors import ColorizerError  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help=f"training checkpoint (default {common.DEFAULT_MODEL})")
    p.add_argument("--onnx", action="append", metavar="PRECISION=PATH",
                   help="use this export instead of exporting the checkpoint (repeatable: fp32=..., int8=...)")
    p.add_argument("--backends", default="torch,onnxruntime,onnxruntime-int8,tensorrt",
                   help=f"comma-separated, of {', '.join(common.BACKENDS)} (torch-nchw: plain NCHW PyTorch eager, "
                        "the prototype's baseline; adds speedup_vs_torch_nchw)")
    p.add_argument("--sizes", default="224,512", help="square input sizes in pixels")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:K] for torch and onnxruntime (tensorrt: always a GPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU inference threads (default: physical cores)")
    p.add_argument("--whole-batches", action="store_true",
                   help="no CPU micro-batching: each batch in one call (engine default: 65,536 pixels per call)")
    p.add_argument("--huge-pages", action="store_true",
                   help="every backend's process asks for transparent huge pages (GLIBC_TUNABLES="
                        "glibc.malloc.hugetlb=1, THP_MEM_ALLOC_ENABLE=1); PyTorch eager gains most)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per configuration")
    p.add_argument("--round-seconds", type=float, default=1.0, help="time per backend per round (at least one call)")
    p.add_argument("--cache-dir", type=Path, default=None, help=f"exports cache (default {common.default_cache_dir()})")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--markdown", type=Path, default=None, help="write the Markdown table here")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    for noisy in ("torch", "onnxscript", "onnx_ir", "export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        specs = common.parse_backends(args.backends)
        sizes = common.parse_list(args.sizes, "sizes", int)
        batches = common.parse_list(args.batch_sizes, "batch-sizes", int)
        onnx = common.parse_onnx_overrides(args.onnx)
        checkpoint = common.check_model(args.model) if common.needs_checkpoint(specs, onnx) or args.model else None
        if args.huge_pages:
            common.ask_for_huge_pages()  # before the backends' processes start
        machine = common.machine_info()
        rows, skipped = measure.run_throughput(
            checkpoint, specs, sizes, batches, device=args.device, rounds=args.rounds,
            round_seconds=args.round_seconds, threads=args.threads,
            cache_dir=args.cache_dir or common.default_cache_dir(), onnx=onnx, whole_batches=args.whole_batches)
    except ColorizerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    machine["load_average_end"] = common.machine_info()["load_average"]
    data = {
        "benchmark": "throughput",
        "command": "benchmarks/throughput.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "model": common.shown_model(checkpoint, onnx),
        "rounds": args.rounds,
        "whole_batches": args.whole_batches,
        "machine": machine,
        "results": rows,
        "skipped": skipped,
    }
    data["checks"] = report.throughput_checks(rows)
    for r in rows:
        speed = f"  {r['speedup_vs_torch']:.2f}x torch" if r.get("speedup_vs_torch") is not None else ""
        if r.get("speedup_vs_torch_nchw") is not None:
            speed += f"  {r['speedup_vs_torch_nchw']:.2f}x torch-nchw"
        huge = r.get("process_memory_mib", {}).get("anon_huge_mib")
        huge_txt = f", {huge:.0f} MiB in huge pages" if huge else ""
        print(f"{r['backend']:18s} {r['device']:7s} {r['size']:5d}px batch {r['batch_size']:3d}: "
              f"{r['images_per_s']:8.2f} img/s ({r['images_per_s_min']:.2f}-{r['images_per_s_max']:.2f})"
              f"{speed}{huge_txt}")
    for s in skipped:
        print(f"{s['backend']:18s} skipped: {s['reason']}")
    for line in report.check_lines(data["checks"]):
        print(line)
    if args.json:
        common.write_json(args.json, data)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report.throughput_markdown(data), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
