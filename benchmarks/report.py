"""Turning benchmark JSON into what people read: target checks, a markdown table, a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import BenchmarkError

# (backend, device kind, size, batch) -> minimum speed-up vs PyTorch eager FP32 on the same device.
THROUGHPUT_TARGETS = (
    ("onnxruntime", "cpu", 224, 8, 1.7),
    ("onnxruntime-int8", "cpu", 224, 8, 2.8),
    ("tensorrt", "cuda", 224, 32, 4.0),
)
PIPELINE_SHARE_TARGET = 0.90  # colorize-dir images/s over model-only images/s, same backend/size/batch
PEAK_RSS_TARGET_GIB = 2.5  # at 512 px, batch 8
GPU_BUSY_TARGET = 0.90  # on a GPU: the pipeline's limiting stage (GPU or CPU I/O) busy for this share of the run
FLAT_RSS_TOLERANCE = 0.10  # peak RSS of the largest file count within 10 % (or 64 MiB) of the smallest
NOISY_SPREAD = 1.3  # a target's backend or baseline whose fastest round beat its slowest by more: flagged as noisy


def throughput_checks(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One check per target whose configuration was measured: value, target, PASS/FAIL."""
    checks = []
    for backend, kind, size, batch, target in THROUGHPUT_TARGETS:
        for r in results:
            if (r["backend"], r["device"].split(":")[0], r["size"], r["batch_size"]) != (backend, kind, size, batch):
                continue
            value = r.get("speedup_vs_torch")
            if value is None:
                continue
            name = f"{backend} {size}px batch {batch} on {kind}: >= {target}x PyTorch eager"
            ok = value >= target
            quality = r.get("export_quality", {})
            if "psnr_db" in quality and quality.get("psnr_floor_db") is not None:
                q_ok = quality["psnr_db"] >= quality["psnr_floor_db"]
                name += f" (export PSNR {quality['psnr_db']:.1f} dB vs floor {quality['psnr_floor_db']:.0f} dB)"
                ok = ok and q_ok
            name += _noise_note(r, results)
            checks.append({"target": name, "value": value, "threshold": target, "status": "PASS" if ok else "FAIL"})
    return checks


def _noise_note(row: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """``" [noisy: ...]"`` when the row's or its torch baseline's rounds spread more than ``NOISY_SPREAD``."""
    same = [r for r in results if r["backend"] in (row["backend"], "torch") and
            (r["device"], r["size"], r["batch_size"]) == (row["device"], row["size"], row["batch_size"])]
    noisy = [f"{r['backend']} rounds {r['images_per_s_min']:.1f}-{r['images_per_s_max']:.1f} img/s" for r in same
             if r.get("images_per_s_min") and r["images_per_s_max"] / r["images_per_s_min"] > NOISY_SPREAD]
    return f" [noisy: {', '.join(noisy)}; rerun to confirm]" if noisy else ""


def check_lines(checks: list[dict[str, Any]]) -> list[str]:
    return [f"{c['status']}  {c['target']}: {c['value']:.2f}" for c in checks]


def check_block(data: dict[str, Any]) -> list[str]:
    """A blank line and one ``- PASS/FAIL ...`` line per target check of a result JSON (nothing without checks)."""
    checks = data.get("checks") or []
    return ["", *(f"- {line}" for line in check_lines(checks))] if checks else []


def skipped_lines(data: dict[str, Any]) -> list[str]:
    """One paragraph per backend the run could not measure, with its reason."""
    return [f"\nSkipped {s['backend']} ({s['device']}): {s['reason']}" for s in data.get("skipped", [])]


def machine_line(m: dict[str, Any]) -> str:
    gpu = ", ".join(m["gpu"]) if m.get("gpu") else "no GPU"
    v = m.get("versions", {})
    libs = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "onnxruntime-gpu", "torch", "tensorrt") if k in v)
    load = m.get("load_average")
    load_txt = f"; load average {load[0]:.1f} at the start" if load else ""
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {gpu}; {libs}{load_txt}{memory_text(m)}"


def memory_text(m: dict[str, Any]) -> str:
    """``; THP madvise, GLIBC_TUNABLES=...`` from ``machine["memory"]`` (empty for results that lack it)."""
    mem = m.get("memory")
    if not mem:
        return ""
    env = ", ".join(f"{k}={v}" for k, v in mem.get("env", {}).items())
    return (f"; transparent huge pages: {mem.get('transparent_hugepage') or '?'}"
            + (f", {env}" if env else ", no memory variables set"))


def throughput_markdown(data: dict[str, Any]) -> str:
    """The results table (``benchmarks/results/throughput.md``): one row per backend/size/batch, spread, speed-ups.

    "× PyTorch" is against the ``torch`` backend; a "× PyTorch NCHW" column (against ``torch-nchw``) is added
    only when some row has ``speedup_vs_torch_nchw``.
    """
    lines = []
    if data.get("command"):
        lines.append(f"Command: `{data['command']}`  ")
    lines.append(f"Machine: {machine_line(data['machine'])}  ")
    if data.get("model"):
        lines.append(f"Model: {data['model']}  ")
    lines.append(f"Rounds: {data.get('rounds', '?')} (backends interleaved; median, min–max over rounds)  ")
    pixels = {r.get("cpu_pixels_per_call") for r in data["results"] if r["device"] == "cpu"}
    if data.get("whole_batches"):
        lines.append("CPU batches run whole (one call per batch, --whole-batches)")
    elif pixels - {None}:
        lines.append(f"CPU batches run as calls of at most {max(pixels - {None}):,} pixels (the engine's default)")
    lines.append("")
    lines += throughput_rows(data["results"]) + skipped_lines(data) + check_block(data)
    return "\n".join(lines) + "\n"


def throughput_rows(results: list[dict[str, Any]]) -> list[str]:
    """The throughput table's lines: header, one row per result, and the baselines' legend when NCHW is there."""
    nchw = any(r.get("speedup_vs_torch_nchw") is not None for r in results)
    lines = ["| backend | precision | device | size | batch | images/s | min–max | × PyTorch |"
             + (" × PyTorch NCHW |" if nchw else ""),
             "|---|---|---|---:|---:|---:|---:|---:|" + ("---:|" if nchw else "")]
    for r in results:
        speed = f"{r['speedup_vs_torch']:.2f}" if r.get("speedup_vs_torch") is not None else "–"
        extra = ""
        if nchw:
            extra = f" {r['speedup_vs_torch_nchw']:.2f} |" if r.get("speedup_vs_torch_nchw") is not None else " – |"
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['device']} | {r['size']} | {r['batch_size']} | "
            f"{r['images_per_s']:.2f} | {r['images_per_s_min']:.2f}–{r['images_per_s_max']:.2f} | {speed} |{extra}"
        )
    if nchw:
        lines.append("\n× PyTorch: vs `torch` (the engine's eager runner, channels-last on a CPU); "
                     "× PyTorch NCHW: vs `torch-nchw` (plain NCHW eager, as the prototype measured).")
    return lines


def plot_throughput(data: dict[str, Any], out: str | Path) -> Path:
    """Bar chart: images/s per backend (bars) and size (groups), one panel per batch size; min–max as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data.get("results") or []
    if not results:
        raise BenchmarkError("plot: the JSON has no results to plot")
    batches = sorted({r["batch_size"] for r in results})
    sizes = sorted({r["size"] for r in results})
    backends = list(dict.fromkeys(f"{r['backend']} ({r['device']})" for r in results))
    fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches) + 1.5, 4.2), squeeze=False)
    width = 0.8 / len(backends)
    for ax, batch in zip(axes[0], batches):
        for j, name in enumerate(backends):
            xs, ys, lo, hi = [], [], [], []
            for i, size in enumerate(sizes):
                r = next((r for r in results if f"{r['backend']} ({r['device']})" == name and r["size"] == size
                          and r["batch_size"] == batch), None)
                if r is None:
                    continue
                xs.append(i + (j - (len(backends) - 1) / 2) * width)
                ys.append(r["images_per_s"])
                lo.append(r["images_per_s"] - r["images_per_s_min"])
                hi.append(r["images_per_s_max"] - r["images_per_s"])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=name)
        ax.set_xticks(range(len(sizes)), [f"{s} px" for s in sizes])
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("images/s (model only)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    m = data["machine"]
    fig.suptitle(f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores" + (f", {m['gpu'][0]}" if m.get("gpu") else ""),
                 fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def pipeline_rows(runs: list[dict[str, Any]], stages: list[str]) -> list[str]:
    """The pipeline table's lines: one row per folder run; ``stages``: the per-stage ms columns to add."""
    lines = ["| backend | size | batch | files | model input | colorize-dir img/s | model-only img/s | share |"
             " model-only img/s at size² | share of it | CPU ms/photo: model + I/O | cores allow img/s |"
             " share of attainable | peak RSS | busy: cores / infer / read / write |" + "".join(f" {s} ms |" for s in stages),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(stages)]
    for r in runs:
        cells = "".join(f" {r['stages'][s]['ms_per_photo']:.1f} ({r['stages'][s]['cpu_ms_per_photo']:.1f}) |"
                        for s in stages)
        h, w = r.get("model_input") or (r["size"], r["size"])
        square = r.get("square_model_only_images_per_s", r["model_only_images_per_s"])
        square_share = r.get("share_of_square_model_only", r["share_of_model_only"])
        busy = " / ".join(f"{v:.0%}" for v in [r.get("cpu_busy"), *r["busy"].values()] if v is not None) \
            if r.get("busy") else "–"
        cpu = r.get("cpu_ms_per_photo")
        limit = (f"{cpu['model']:.1f} + {cpu['io']:.1f} | {r['cores_allow_images_per_s']:.2f} | "
                 f"{r['share_of_attainable']:.0%}") if cpu else "– | – | –"
        lines.append(
            f"| {r['backend']} | {r['size']} | {r['batch_size']} | {r['files']} | {w}x{h} | {r['images_per_s']:.2f} | "
            f"{r['model_only_images_per_s']:.2f} | {r['share_of_model_only']:.0%} | {square:.2f} | {square_share:.0%} | "
            f"{limit} | {r['peak_rss_mib']:.0f} MiB | {busy} |{cells}"
        )
    return lines


def pipeline_markdown(data: dict[str, Any]) -> str:
    """The performance doc's table of colorize-dir runs: images/s, share of model-only, peak RSS, time per stage."""
    lines = []
    if data.get("command"):
        lines.append(f"Command: `{data['command']}`  ")
    lines.append(f"Machine: {machine_line(data['machine'])}  ")
    lines.append(f"Photos: {data.get('photos', '?')}")
    lines.append("")
    stages = list(data["runs"][0]["stages"]) if data.get("runs") else []
    lines += pipeline_rows(data.get("runs", []), stages)
    lines.append("")
    lines.append("Model input: what colorize-dir feeds the model for these photos (tight padding on a CPU: the long "
                 "side at size, the short side padded only to the model's size multiple); model-only img/s is "
                 "measured at that input in the same process, and at size x size (throughput.py's input).")
    lines.append("")
    lines.append("Stage times are per photo: wall time summed over the threads doing that stage (thread CPU time in "
                 "parentheses); `infer` is the batch call divided by its photos, its CPU time that of the calling "
                 "thread only (not the runtime's other threads). Busy: the share of the run's wall time the "
                 "inference thread spent in model calls (on a GPU, about how busy the GPU was kept), the readers in "
                 "decode + resize and the writers in compose + encode + write (per thread); the stage near 100 % "
                 "limits the run; cores: the process's CPU time during the run over the machine's cores times the "
                 "run's wall time. Cores allow: the machine's cores over the CPU time one photo costs (the model's: "
                 "the process's CPU time per image in the model-only phases; the I/O's: the reader and writer "
                 "stages' thread CPU time); attainable: the smaller of that and model-only img/s.")
    lines += skipped_lines(data)
    lines += check_block(data)
    return "\n".join(lines) + "\n"
