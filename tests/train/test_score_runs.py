"""cli.py score-runs and score-whole: scoring runs through the engine, on a tiny checkpoint."""

from __future__ import annotations

import json
import re
import shutil

from click.testing import CliRunner

import cli
from train import rundir
from tests.conftest import SAMPLES


def test_score_runs_scores_finished_runs_and_writes_the_report(tiny_checkpoint, tmp_path):
    runs = tmp_path / "runs"
    for name, done in (("a", True), ("unfinished", False)):
        (runs / name).mkdir(parents=True)
        shutil.copy(tiny_checkpoint, runs / name / "last.pt")
        if done:
            rundir.mark_done(runs / name, 6, 6)
    val = tmp_path / "val.txt"
    val.write_text("".join(f"{p}\n" for p in sorted(SAMPLES.glob("color-*.jpg"))[:2]))
    out = tmp_path / "scores.json"
    r = CliRunner().invoke(cli.main, ["score-runs", "--runs", str(runs), "--val", str(val), "--size", "32",
                                      "--temperatures", "0.5,1.0", "--json", str(out), "--grids", str(tmp_path / "g")])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert [e["variant"] for e in report["results"]] == ["a"]  # the unfinished run is not scored
    entry = report["results"][0]
    assert entry["best"] in entry["scores"] and all(s["images"] == 2 for s in entry["scores"])
    assert (tmp_path / "g" / "a.jpg").is_file()
    assert r.output.splitlines()[-1].startswith(f"winner: a T={report['winner']['temperature']} ")
    # three decimals: the decisions compare ratios a few thousandths apart
    rows = [ln for ln in r.output.splitlines() if ln.startswith("a ")]
    assert len(rows) == len(entry["scores"]) and all(re.search(r"PSNR \d+\.\d{3} \(gray \d+\.\d{3}\) .* ratio \d\.\d{3}$", ln)
                                  for ln in rows), rows
    assert r.output.splitlines()[-1].endswith(f"ratio {report['winner']['colourfulness_ratio']:.3f}")


def test_score_runs_usage_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli.main, ["score-runs", "--runs", str(tmp_path), "--val", str(tmp_path)])
    assert r.exit_code == 2 and "nothing to score" in r.output
    r = runner.invoke(cli.main, ["score-runs", "--runs", str(tmp_path), "--val", str(tmp_path), "--temperatures", "0,x"])
    assert r.exit_code == 2 and "--temperatures: expected numbers > 0" in r.output


def test_score_whole_scores_each_checkpoint_at_each_temperature(tiny_checkpoint, tmp_path):
    import numpy as np

    from engine.net.checkpoint import save_checkpoint
    from engine.net.chroma_bins import bins_from_samples
    from engine.net.model import ColorizerNet, ModelConfig

    centres, _ = bins_from_samples(np.random.default_rng(0).normal(0, 0.1, (5000, 2)))
    config = ModelConfig(width_mult=0.125, head="classification", head_options={"centres": centres.tolist()})
    cls = tmp_path / "cls.pt"
    save_checkpoint(cls, {"model_config": config.to_dict(), "model": ColorizerNet(config).state_dict(), "step": 1})
    val = tmp_path / "val.txt"
    val.write_text("".join(f"{p}\n" for p in sorted(SAMPLES.glob("color-*.jpg"))[:2]))
    r = CliRunner().invoke(cli.main, ["score-whole", str(val), str(cls), str(tiny_checkpoint), "--temperatures",
                                      "0.5,1.0", "--size", "32"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("2 photos, long side 512, model at 32; gray PSNR ")
    # the classification head at each T; the tiny model's regression head once, without one
    assert [ln.split("  ")[:2] for ln in lines[1:]] == [[str(cls), "T=0.50"], [str(cls), "T=1.00"],
                                                        [str(tiny_checkpoint), "T=-"]]


def test_score_whole_ensemble_averages_the_outputs(tiny_checkpoint, tmp_path):
    import numpy as np

    from train.recipes import score_whole as sw

    a = np.array([[[0, 10, 255]]], np.uint8)
    b = np.array([[[1, 20, 254]]], np.uint8)
    np.testing.assert_array_equal(sw.average([[a], [b]])[0], [[[0, 15, 254]]])  # round half to even, per channel
    np.testing.assert_array_equal(sw.average([[a], [a], [b]])[0], [[[0, 13, 255]]])
    val = tmp_path / "val.txt"
    val.write_text("".join(f"{p}\n" for p in sorted(SAMPLES.glob("color-*.jpg"))[:2]))
    other = tmp_path / "other.pt"
    shutil.copy(tiny_checkpoint, other)
    r = CliRunner().invoke(cli.main, ["score-whole", str(val), str(tiny_checkpoint), str(other), "--size", "32",
                                      "--ensemble"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) == 4 and lines[3].startswith("ensemble of 2  T=-  PSNR ")
    # two copies of one model: the ensemble is that model
    assert lines[1].split("  ", 1)[1] == lines[2].split("  ", 1)[1] == lines[3].split("  ", 1)[1]
    r = CliRunner().invoke(cli.main, ["score-whole", str(val), str(tiny_checkpoint), "--ensemble"])
    assert r.exit_code == 2 and "--ensemble: expected two or more checkpoints, found 1" in r.output
