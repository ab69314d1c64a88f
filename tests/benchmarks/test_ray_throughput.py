"""Smoke test of benchmarks/ray_throughput.py at a tiny size (the module's local Ray instance)."""

from __future__ import annotations

import json


def test_ray_throughput_smoke(ray_local, tiny_onnx, tmp_path, capsys):
    from benchmarks import ray_throughput

    out = tmp_path / "r.json"
    rc = ray_throughput.main(["--count", "4", "--photo", "80x60", "--size", "32", "--batch-size", "2",
                              "--workers", "1", "--model", str(tiny_onnx), "--work", str(tmp_path), "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["ray_version"] == ray_local.__version__ and data["config"]["count"] == 4
    assert [r["mode"] for r in data["results"]] == ["local", "ray-1-workers"]
    for r in data["results"]:
        assert r["colorized"] == 4 and r["failed"] == 0 and r["images_per_second"] > 0
    assert data["results"][1]["vs_local_run"] > 0 and "img/s steady" in capsys.readouterr().out
    assert all(r["cpu_seconds"] > 0 and r["stages"]["infer"]["photos"] == 4 for r in data["results"])


def test_ray_throughput_usage_error(tmp_path, capsys):
    from benchmarks import ray_throughput

    assert ray_throughput.main(["--workers", "0", "--work", str(tmp_path)]) == 2
    assert "--workers" in capsys.readouterr().err
