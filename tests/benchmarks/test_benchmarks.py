"""Smoke tests of benchmarks/throughput.py, pipeline.py and plot.py at tiny sizes (tiny model, 32 px, 1 round).

They check the JSON schema and that every number is positive and finite; speed
targets are reported by the scripts (PASS/FAIL lines), never asserted here.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from benchmarks import pipeline as pipeline_script
from benchmarks import plot as plot_script
from benchmarks import throughput as throughput_script

ROW_KEYS = {"backend", "precision", "device", "size", "batch_size", "images_per_s", "images_per_s_min",
            "images_per_s_max", "speedup_vs_torch"}
NCHW_KEYS = {"speedup_vs_torch_nchw", "speedup_vs_torch_nchw_min", "speedup_vs_torch_nchw_max"}


def _numbers(obj):
    """Every int/float in a JSON value (bools excluded)."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


def _check_machine(m):
    assert {"cpu", "cores", "gpu", "versions"} <= set(m)
    assert m["cores"] >= 1 and "python" in m["versions"] and "onnxruntime" in m["versions"]


@pytest.fixture(scope="module")
def throughput_json(tiny_checkpoint, tiny_onnx, tmp_path_factory):
    """One tiny run: torch-nchw + torch + ORT FP32 (the fixture's export) + ORT INT8 (exported by the script) +
    TensorRT. torch-nchw comes first: ``speedup_vs_torch`` must still be against ``torch``."""
    out = tmp_path_factory.mktemp("tp")
    argv = ["--model", str(tiny_checkpoint), "--onnx", f"fp32={tiny_onnx}",
            "--backends", "torch-nchw,torch,onnxruntime,onnxruntime-int8,tensorrt", "--sizes", "32,48",
            "--batch-sizes", "1,2",
            "--rounds", "1", "--round-seconds", "0.01", "--cache-dir", str(out / "cache"),
            "--json", str(out / "t.json"), "--markdown", str(out / "t.md")]
    assert throughput_script.main(argv) == 0
    return out


def test_throughput_json_schema(throughput_json, capsys):
    data = json.loads((throughput_json / "t.json").read_text())
    _check_machine(data["machine"])
    rows = data["results"]
    assert {(r["backend"], r["size"], r["batch_size"]) for r in rows} >= {
        (b, s, n) for b in ("torch-nchw", "torch", "onnxruntime", "onnxruntime-int8") for s in (32, 48) for n in (1, 2)}
    for r in rows:
        assert ROW_KEYS | NCHW_KEYS <= set(r), r
        assert r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
        assert r["speedup_vs_torch_nchw_min"] <= r["speedup_vs_torch_nchw"] <= r["speedup_vs_torch_nchw_max"]
        assert r["device"] == "cpu" and r["speedup_vs_torch"] is not None
    measured = [{k: r[k] for k in ROW_KEYS | NCHW_KEYS | {"rounds", "calls_per_round"}} for r in rows]
    assert all(math.isfinite(x) and x > 0 for x in _numbers(measured)), measured
    by = {(r["backend"], r["size"], r["batch_size"]): r for r in rows}
    for s in (32, 48):
        for n in (1, 2):
            torch_row, nchw_row = by["torch", s, n], by["torch-nchw", s, n]
            assert torch_row["speedup_vs_torch"] == 1.0 and nchw_row["speedup_vs_torch_nchw"] == 1.0
            assert nchw_row["precision"] == "fp32" and nchw_row["engine_backend"] == "torch"
            # one round: torch vs nchw is the inverse of nchw vs torch (up to rounding to 3 decimals)
            assert torch_row["speedup_vs_torch_nchw"] * nchw_row["speedup_vs_torch"] == pytest.approx(1, rel=0.01)
    assert all(r["process_memory_mib"]["rss_mib"] > 20 for r in rows)  # each backend's own process, Linux
    assert set(data["machine"]["memory"]) == {"transparent_hugepage", "env"}
    int8 = next(r for r in rows if r["backend"] == "onnxruntime-int8")
    assert int8["precision"] == "int8" and int8["export_quality"]["psnr_db"] >= int8["export_quality"]["psnr_floor_db"]
    if not data["machine"]["gpu"]:  # TensorRT cannot run here: listed as skipped, with the reason
        skipped = {s["backend"]: s["reason"] for s in data["skipped"]}
        assert "tensorrt" in skipped and "CUDA" in skipped["tensorrt"]
        assert all(r["backend"] != "tensorrt" for r in rows)
    md = (throughput_json / "t.md").read_text()
    assert "| backend | precision | device | size | batch | images/s |" in md and "benchmarks/throughput.py" in md
    assert "| × PyTorch | × PyTorch NCHW |" in md and "| torch-nchw | fp32 | cpu | 32 | 1 |" in md


def test_plot_png_and_table(throughput_json):
    png, md = throughput_json / "t.png", throughput_json / "t2.md"
    assert plot_script.main([str(throughput_json / "t.json"), "--png", str(png), "--markdown", str(md)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert md.read_text() == (throughput_json / "t.md").read_text()


def test_torch_nchw_contender_runs_nchw(tiny_checkpoint):
    from benchmarks import common, contender, measure

    spec = common.parse_backends("torch-nchw")[0]
    assert spec.name == "torch-nchw" and spec.engine_backend == "torch" and spec.channels_last is False
    c = contender.open_contender(spec, tiny_checkpoint, "cpu", threads=1)
    try:
        assert c.skipped is None and "NCHW" in c.info["describe"]
    finally:
        measure.close_all([c])
    default = throughput_script.parse_args([]).backends
    assert "torch-nchw" not in common.parse_list(default, "backends")  # opt-in only
    assert "torch-nchw" in throughput_script.parse_args(["--backends", "torch-nchw"]).backends


def _fake_rows(names, rates):
    """results_for on made-up per-round rates (no runner needed)."""
    from benchmarks import common, measure

    contenders = [measure.Contender(common.BACKENDS[n], "cpu") for n in names]
    measured = {n: {"rates": rates[n], "calls": 1} for n in names}
    return {r["backend"]: r for r in measure.results_for(contenders, 224, 8, measured)}


def test_speedups_keep_torch_as_the_baseline():
    from benchmarks import report

    rates = {"torch": [10.0, 12.0, 8.0], "torch-nchw": [5.0, 10.0, 8.0], "onnxruntime": [20.0, 18.0, 8.0]}
    rows = _fake_rows(["torch-nchw", "torch", "onnxruntime"], rates)
    ort = rows["onnxruntime"]
    assert (ort["speedup_vs_torch"], ort["speedup_vs_torch_min"], ort["speedup_vs_torch_max"]) == (1.5, 1.0, 2.0)
    assert (ort["speedup_vs_torch_nchw"], ort["speedup_vs_torch_nchw_min"], ort["speedup_vs_torch_nchw_max"]) == (
        1.8, 1.0, 4.0)
    assert rows["torch"]["speedup_vs_torch_nchw"] == 1.2 and rows["torch-nchw"]["speedup_vs_torch"] == 0.833
    # the target checks read speedup_vs_torch (1.5x here), not the larger ratio against NCHW
    checks = report.throughput_checks(list(rows.values()))
    assert [(c["value"], c["status"]) for c in checks] == [(1.5, "FAIL")]

    assert "[noisy: torch rounds 8.0-12.0 img/s, onnxruntime rounds 8.0-20.0 img/s; rerun to confirm]" in \
        checks[0]["target"]
    quiet = _fake_rows(["torch", "onnxruntime"], {"torch": [10.0, 11.0, 12.0], "onnxruntime": [20.0, 18.0, 19.0]})
    assert "noisy" not in report.throughput_checks(list(quiet.values()))[0]["target"]

    # without torch: no speed-up against torch at all (never silently against torch-nchw), so no target check
    rows = _fake_rows(["torch-nchw", "onnxruntime"], rates)
    assert rows["onnxruntime"]["speedup_vs_torch"] is None and rows["onnxruntime"]["speedup_vs_torch_nchw"] == 1.8
    assert report.throughput_checks(list(rows.values())) == []

    # without torch-nchw: no new field, and the table keeps its columns
    rows = _fake_rows(["torch", "onnxruntime"], rates)
    assert all("speedup_vs_torch_nchw" not in r for r in rows.values())
    md = report.throughput_markdown({"machine": {}, "results": list(rows.values())})
    assert "NCHW" not in md and md.count("| × PyTorch |") == 1


def test_pipeline_refuses_torch_nchw(tmp_path, capsys):
    assert pipeline_script.main(["--backends", "torch-nchw", "--model", str(tmp_path / "x.pt")]) == 2
    assert "torch-nchw is a throughput.py baseline only" in capsys.readouterr().err


def test_pipeline_json_schema(tiny_onnx, tmp_path):
    out = tmp_path / "p.json"
    argv = ["--onnx", f"fp32={tiny_onnx}", "--backends", "onnxruntime,tensorrt", "--sizes", "32", "--batch-sizes", "2",
            "--files", "3,5", "--width", "160", "--height", "90", "--model-seconds", "0.05", "--repeats", "2",
            "--cache-dir", str(tmp_path / "cache"), "--json", str(out), "--markdown", str(tmp_path / "p.md")]
    assert pipeline_script.main(argv) == 0
    data = json.loads(out.read_text())
    _check_machine(data["machine"])
    if not data["machine"]["gpu"]:  # TensorRT cannot run here: listed as skipped, with the reason
        assert [s["backend"] for s in data["skipped"]] == ["tensorrt"] and "CUDA" in data["skipped"][0]["reason"]
        assert "Skipped tensorrt (cuda:0)" in (tmp_path / "p.md").read_text()
    data["runs"] = [r for r in data["runs"] if r["backend"] != "tensorrt"]
    assert [(r["files"], r["backend"]) for r in data["runs"]] == [(3, "onnxruntime"), (5, "onnxruntime")]
    for r in data["runs"]:
        assert set(r["stages"]) == {"decode", "resize", "infer", "compose", "encode", "write"}
        assert r["peak_rss_mib"] > 50 and 0 < r["share_of_model_only"] < 10 and r["repeats"] == 2
        assert r["share_of_model_only_min"] <= r["share_of_model_only"] <= r["share_of_model_only_max"]
        assert r["padding"] == "tight" and r["model_input"] == [24, 32]  # 160x90 at 32 px, padded to 8
        assert r["square_model_only_images_per_s"] > 0 and 0 < r["share_of_square_model_only"] < 10
        assert set(r["busy"]) == {"inference", "readers", "writers"}
        assert all(0 < v <= 1.05 for v in r["busy"].values()), r["busy"]  # wall shares of the run (timer jitter)
        assert 0 < r["cpu_busy"] <= 1.05 and r["run_cpu_ms_per_photo"] > 0
        cpu = r["cpu_ms_per_photo"]
        assert cpu["model"] > 0 and cpu["io"] > 0 and r["cpus"] >= 1
        assert r["cores_allow_images_per_s"] == pytest.approx(r["cpus"] * 1000 / (cpu["model"] + cpu["io"]))
        assert r["attainable_images_per_s"] <= r["model_only_images_per_s"] + 1e-9
        assert r["share_of_attainable"] == pytest.approx(r["images_per_s"] / r["attainable_images_per_s"])
    assert all(math.isfinite(x) and x > 0 for x in _numbers({k: r[k] for r in data["runs"] for k in (
        "images_per_s", "model_only_images_per_s", "share_of_model_only", "peak_rss_mib", "seconds")}))
    assert any("peak RSS flat" in c["target"] for c in data["checks"])
    assert "| backend | size | batch | files |" in (tmp_path / "p.md").read_text()
    rows = [ln for ln in (tmp_path / "p.md").read_text().splitlines() if ln.startswith("|")]
    assert len(rows) == 4 and {ln.count("|") for ln in rows} == {rows[0].count("|")}  # every row: the header's columns
    assert plot_script.main([str(out)]) == 0  # a pipeline JSON prints its table


def test_exports_shipped_beside_the_checkpoint_are_used(tiny_checkpoint, tiny_onnx, tmp_path):
    """models/colorizer.pt with models/colorizer.onnx exported from it: benchmarked as shipped, not re-exported."""
    import shutil

    from benchmarks import common
    from engine.core.contract import sidecar_path

    shutil.copy(tiny_checkpoint, tmp_path / "colorizer.pt")
    shutil.copy(tiny_onnx, tmp_path / "colorizer.onnx")
    shutil.copy(sidecar_path(tiny_onnx), tmp_path / "colorizer.json")
    got = common.onnx_for(tmp_path / "colorizer.pt", "fp32", tmp_path / "cache", {})
    assert got == tmp_path / "colorizer.onnx" and not (tmp_path / "cache").exists()
    # an export made from another checkpoint (sha256 differs), or of another precision, is not used
    assert common.shipped_export(tmp_path / "colorizer.pt", "fp32", "0" * 64) is None
    assert common.shipped_export(tmp_path / "colorizer.pt", "int8", common.sha256_file(tmp_path / "colorizer.pt")) is None


def test_tensorrt_engines_are_built_into_the_cache(tiny_onnx, tmp_path, monkeypatch):
    """Never beside the export (models/ stays as shipped); named by the export's sha256 and the profile."""
    from benchmarks import common
    from engine.core.contract import read_sidecar
    from export import trt_build

    built = []
    monkeypatch.setattr(trt_build, "build_engine", lambda onnx, out, **kw: built.append((onnx, out, kw)))
    plan = common.plan_for(tiny_onnx, [64, 224], [1, 32], tmp_path / "cache")
    digest = read_sidecar(tiny_onnx)["sha256"][:16]
    assert plan == tmp_path / "cache" / "engines" / f"{tiny_onnx.stem}-{digest}-fp16-b32-s64-224.plan"
    assert plan.parent.is_dir() and not any(tiny_onnx.parent.glob("*.plan"))
    assert built == [(tiny_onnx, plan, {"precision": "fp16", "batch": (1, 32, 32), "size": (64, 224, 224),
                                        "overwrite": True})]  # a stale engine in the cache is replaced


def test_missing_default_model_is_a_clear_usage_error(monkeypatch, tmp_path, capsys):
    from benchmarks import common

    monkeypatch.setattr(common, "DEFAULT_MODEL", tmp_path / "models" / "colorizer.pt")
    assert throughput_script.main(["--backends", "torch", "--sizes", "32", "--batch-sizes", "1"]) == 2
    err = capsys.readouterr().err
    assert "colorizer.pt: checkpoint not found" in err and "--model" in err
    assert throughput_script.main(["--backends", "torch,nope", "--model", str(tmp_path / "x.pt")]) == 2
    assert "--backends: expected some of" in capsys.readouterr().err
    assert pipeline_script.main(["--files", "0", "--model", str(tmp_path / "x.pt")]) == 2


@pytest.mark.gpu
def test_throughput_tensorrt_and_torch_on_cuda(tiny_checkpoint, tiny_onnx, tmp_path):
    out = tmp_path / "g.json"
    argv = ["--model", str(tiny_checkpoint), "--onnx", f"fp32={tiny_onnx}", "--device", "cuda",
            "--backends", "torch,tensorrt", "--sizes", "64", "--batch-sizes", "1,4", "--rounds", "1",
            "--round-seconds", "0.05", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    assert throughput_script.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["machine"]["gpu"]
    rows = {(r["backend"], r["batch_size"]): r for r in data["results"]}
    assert set(rows) == {("torch", 1), ("torch", 4), ("tensorrt", 1), ("tensorrt", 4)}, data.get("skipped")
    for r in rows.values():
        assert r["device"].startswith("cuda") and r["images_per_s"] > 0 and r["speedup_vs_torch"] > 0


def test_busy_shares_and_the_gpu_check():
    from benchmarks.pipeline_run import busy, busy_checks

    st = {k: {"seconds": v, "cpu_seconds": 0.0, "photos": 10} for k, v in
          {"decode": 6.0, "resize": 2.0, "infer": 9.5, "compose": 1.0, "encode": 3.0, "write": 2.0}.items()}
    b = busy(st, 10.0, (4, 2))
    assert b == pytest.approx({"inference": 0.95, "readers": 0.2, "writers": 0.3})
    base = {"backend": "tensorrt", "size": 224, "batch_size": 32, "files": 500}
    gpu_bound = {**base, "device": "cuda:0", "busy": b}
    cpu_bound = {**base, "device": "cuda:0", "busy": {"inference": 0.1, "readers": 0.97, "writers": 0.5}}
    stalled = {**base, "device": "cuda:0", "busy": {"inference": 0.5, "readers": 0.6, "writers": 0.4}}
    on_cpu = {**base, "backend": "onnxruntime", "device": "cpu", "busy": b}
    checks = busy_checks([gpu_bound, cpu_bound, stalled, on_cpu], 0.9)
    assert [c["status"] for c in checks] == ["PASS", "PASS", "FAIL"]
    assert "limit: the GPU" in checks[0]["target"] and "limit: the CPU (readers" in checks[1]["target"]
    assert checks[2]["value"] == pytest.approx(0.6)


@pytest.mark.gpu
def test_pipeline_tensorrt_on_cuda(tiny_onnx, tmp_path):
    out = tmp_path / "g.json"
    argv = ["--onnx", f"fp32={tiny_onnx}", "--backends", "tensorrt", "--device", "cuda", "--sizes", "64",
            "--batch-sizes", "8", "--files", "12", "--width", "320", "--height", "180", "--model-seconds", "0.1",
            "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    assert pipeline_script.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["machine"]["gpu"] and not data["skipped"]
    (r,) = data["runs"]
    assert r["backend"] == "tensorrt" and r["device"].startswith("cuda") and r["padding"] == "square"
    assert r["images_per_s"] > 0 and r["model_only_images_per_s"] > 0 and 0 < r["busy"]["inference"] <= 1.05
    assert any("limiting stage busy" in c["target"] for c in data["checks"])


def test_share_checks_compare_with_both_model_inputs():
    from benchmarks.pipeline_run import share_checks

    base = {"backend": "onnxruntime", "size": 224, "batch_size": 8, "device": "cpu", "files": 50}
    square = {**base, "share_of_model_only": 0.93}
    tight = {**base, "model_input": [128, 224], "share_of_model_only": 0.7, "share_of_square_model_only": 1.2}
    other = {**base, "size": 512, "share_of_model_only": 0.1}
    checks = share_checks([square, tight, other], 0.9)
    assert [(c["target"].split(": ", 1)[1], c["status"]) for c in checks] == [
        ("colorize-dir >= 90% of model-only at its own input (224x224)", "PASS"),
        ("colorize-dir >= 90% of model-only at its own input (224x128)", "FAIL"),
        ("colorize-dir >= 90% of model-only at 224x224 (throughput.py's input)", "PASS"),
    ]


def test_cpu_limit_and_its_check():
    """2 cores, model 40 ms + I/O 10 ms of CPU per photo: the cores allow 40 img/s, below the model's 50."""
    from benchmarks import pipeline_run

    phases = [{"images": 16, "seconds": 0.32, "cpu_seconds": 0.64}, {"images": 8, "seconds": 0.16, "cpu_seconds": 0.32}]
    stages = {"decode": {"cpu_ms_per_photo": 6.0}, "resize": {"cpu_ms_per_photo": 1.0},
              "infer": {"cpu_ms_per_photo": 3.0}, "encode": {"cpu_ms_per_photo": 3.0}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
        lim = pipeline_run.cpu_limit(phases, stages, 36.0, 50.0)
    assert lim["cpu_ms_per_photo"] == pytest.approx({"model": 40.0, "io": 10.0})
    assert lim["cpus"] == 2 and lim["cores_allow_images_per_s"] == pytest.approx(40.0)
    assert lim["attainable_images_per_s"] == pytest.approx(40.0) and lim["share_of_attainable"] == pytest.approx(0.9)
    base = {"backend": "onnxruntime", "batch_size": 8, "files": 50, "model_only_images_per_s": 50.0,
            "share_of_model_only": 0.72, **lim}
    checks = pipeline_run.share_checks([{**base, "size": 224, "device": "cpu"}, {**base, "size": 512, "device": "cpu"},
                                        {**base, "size": 512, "device": "cuda:0", "share_of_attainable": 0.5}], 0.9)
    assert [c["status"] for c in checks] == ["FAIL", "PASS", "FAIL"]
    assert "2 cores / (40.0 ms model + 10.0 ms I/O CPU per photo) = 40.0 img/s" in checks[1]["target"]
    assert checks[2]["target"].startswith("onnxruntime 512px batch 8, 50 files")


def test_huge_pages_are_asked_for_in_the_environment(monkeypatch):
    from benchmarks import common

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert common.memory_setup()["env"]["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    common.ask_for_huge_pages()
    common.ask_for_huge_pages()  # idempotent
    env = common.memory_setup()["env"]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert env["THP_MEM_ALLOC_ENABLE"] == "1"
    from benchmarks.report import memory_text

    assert memory_text({"memory": common.memory_setup()}).endswith(
        "GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1, THP_MEM_ALLOC_ENABLE=1")
    mem = common.process_memory()
    assert mem["rss_mib"] > 20 and mem["anon_huge_mib"] >= 0


def test_runner_descriptions_name_repository_files_relative_to_it():
    from benchmarks import common

    inside, outside = common.ROOT / "models" / "colorizer.onnx", "/elsewhere/m.onnx"
    assert common.shown_paths(f"ort (CPU, 2 threads) {inside}") == "ort (CPU, 2 threads) models/colorizer.onnx"
    assert common.shown_paths(f"ort (CPU) {outside}") == f"ort (CPU) {outside}"
