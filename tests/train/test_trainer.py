import json
import logging
import math
import os
import signal
import subprocess
import time

import pytest
import torch
from click.testing import CliRunner

import cli
from train import losses as L
from engine.net.checkpoint import load_checkpoint, load_model
from engine.net.model import ModelConfig
from train.rundir import read_metrics
from train.trainer import ResumeError, TrainingDiverged, lr_factor, train
from tests.conftest import TINY_MODEL
from tests.train.conftest import CLI, subprocess_env, write_photos

pytestmark = pytest.mark.usefixtures("one_thread")


def _state(path):
    return load_checkpoint(path)["model"]


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_writes_checkpoints_metrics_and_splits(tiny_cfg, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        result = train(tiny_cfg(amp=True))
    out = tmp_path / "run"
    assert result.step == 6 and result.resumed_from is None
    assert "note: --amp only applies on CUDA" in caplog.text
    assert "step 6/6" in caplog.text and "img/s" in caplog.text and "eta" in caplog.text
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [3, 6]
    for r in rows:
        assert math.isfinite(r["val_psnr"]) and r["val_images"] == 1 and r["gt_colourfulness"] > 0
        assert r["colourfulness_ratio"] == pytest.approx(r["val_colourfulness"] / r["gt_colourfulness"])
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] == 6
    assert {"optimizer", "scheduler", "rng", "train_config", "loss_state", "best_psnr"} <= set(ckpt)
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch"}
    assert ckpt["train_config"]["batch_size"] == 4 and ckpt["train_config"]["world_size"] == 1
    model, _ = load_model(out / "last.pt", expect=ModelConfig.from_dict(TINY_MODEL))
    assert model(torch.rand(1, 1, 9, 11)).shape == (1, 2, 9, 11)
    best = load_checkpoint(out / "best.pt")
    assert best["best_psnr"] == max(r["val_psnr"] for r in rows)
    assert len((out / "val_files.txt").read_text().splitlines()) == 1  # 12 photos, every 10th validates
    assert len((out / "train_files.txt").read_text().splitlines()) == 11
    assert not list(out.glob(".*.tmp-*"))


LOSS_SETTINGS = {"huber": {}, "classification": {"samples": 20000, "warmup": 3}}


@pytest.mark.parametrize("loss", sorted(LOSS_SETTINGS))
def test_resume_continues_at_the_exact_step_with_identical_weights(tiny_cfg, tmp_path, caplog, loss):
    kw = dict(steps=8, loss=loss, loss_options=LOSS_SETTINGS[loss])
    full = train(tiny_cfg(out=str(tmp_path / "full"), **kw))
    part = train(tiny_cfg(out=str(tmp_path / "part"), stop_at_step=5, **kw))
    assert part.step == 5 and load_checkpoint(tmp_path / "part" / "last.pt")["step"] == 5
    assert (tmp_path / "full" / "DONE").is_file() and not (tmp_path / "part" / "DONE").exists()  # stopped early
    with caplog.at_level(logging.INFO):
        resumed = train(tiny_cfg(out=str(tmp_path / "part"), resume=True, **kw))
    assert resumed.resumed_from == 5 and resumed.step == 8
    assert json.loads((tmp_path / "part" / "DONE").read_text()) == {"step": 8, "steps": 8, "checkpoint": "last.pt"}
    assert f"resuming from {tmp_path / 'part' / 'last.pt'} at step 5/8" in caplog.text
    _assert_same_state(_state(tmp_path / "full" / "last.pt"), _state(tmp_path / "part" / "last.pt"))
    assert resumed.state_sha256 == full.state_sha256
    opt_full = load_checkpoint(tmp_path / "full" / "last.pt")["optimizer"]["state"]
    opt_part = load_checkpoint(tmp_path / "part" / "last.pt")["optimizer"]["state"]
    for i in opt_full:
        _assert_same_state(opt_full[i], opt_part[i])
    assert [r["step"] for r in read_metrics(tmp_path / "part" / "metrics.jsonl")] == [3, 5, 6, 8]


@pytest.fixture()
def nan_loss():
    """Huber, but NaN at the steps listed in the ``nan_steps`` option (or from ``nan_from`` on)."""

    @L.register_loss("test-nan")
    class NanLoss(L.HuberLoss):
        def __init__(self, nan_steps=(), nan_from=10**9):
            super().__init__()
            self.options = {"nan_steps": list(nan_steps), "nan_from": nan_from}
            self.nan_steps, self.nan_from, self.step = set(nan_steps), nan_from, 0

        def set_step(self, step):
            self.step = step

        def forward(self, outputs, target_uv):
            loss = super().forward(outputs, target_uv)
            return loss * float("nan") if self.step in self.nan_steps or self.step >= self.nan_from else loss

    yield "test-nan"
    L.LOSSES.pop("test-nan")


def test_nan_steps_are_skipped_without_an_update(tiny_cfg, tmp_path, nan_loss, caplog):
    with caplog.at_level(logging.WARNING):
        result = train(tiny_cfg(loss=nan_loss, loss_options={"nan_steps": [1, 2]}))
    assert result.step == 6
    skipped = [r.getMessage() for r in caplog.records if "step skipped" in r.getMessage()]
    assert len(skipped) == 2 and "step 2: loss is nan" in skipped[0]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(float(s["step"]) == 4 for s in ckpt["optimizer"]["state"].values())  # 6 steps, 2 skipped
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path, nan_loss):
    with pytest.raises(TrainingDiverged, match=r"6 consecutive steps \(4-9\).*step 3\)"):
        train(tiny_cfg(loss=nan_loss, loss_options={"nan_from": 3}, steps=30))
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 3
    load_model(tmp_path / "run" / "last.pt")
    assert not list((tmp_path / "run").glob(".*.tmp-*"))


def test_lr_schedule_warms_up_then_decays():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.51)
    assert lr_factor(100, 100, 10) == pytest.approx(0.02)
    assert lr_factor(0, 5, 0) == pytest.approx(1.0)


def test_unreadable_photo_is_skipped_and_training_runs(tmp_path, tiny_cfg, caplog):
    data = write_photos(tmp_path / "data", n=6)
    (data / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with caplog.at_level(logging.WARNING):
        result = train(tiny_cfg(data=str(data), steps=2, val_fraction=0.0))
    assert result.step == 2
    assert sum("corrupt.jpg" in r.getMessage() for r in caplog.records) == 1


# ----------------------------------------------------------------------------- CLI: bad input


def _cli(*args):
    return CliRunner().invoke(cli.main, ["train", *map(str, args)])


TINY_ARGS = ["--width-mult", "0.125", "--image-size", "32", "--batch-size", "4", "--workers", "1"]


@pytest.mark.parametrize("case, expect", [
    ("missing", "data folder not found"),
    ("empty", "no images"),
    ("unreadable", "image(s) could be read"),
    ("out-under-file", "not writable"),
    ("out-is-file", "exists and is not a folder"),
    ("nothing-to-resume", "nothing to resume"),
    ("bad-width", "expected one of"),
    ("bad-steps", "--steps: expected >= 1"),
    ("bad-zoom", "--zoom: expected 1 to 4, found 0.5"),
    ("bad-ema", "--ema: expected 0 (off) or a decay from 0.5 to below 1, found 1.0"),
    ("bad-repeat", "--repeat: expected GLOB=N with N an integer from 1 to 100, found 'a/*=0'"),
    ("repeat-matches-nothing", "--repeat imagenet_*=2: matches no training photo"),
    ("bad-members", "--members: expected 1 to 8, found 9"),
    ("teacher-with-huber", "--teacher: expected --loss classification (a loss that learns a colour distribution), found huber"),
    ("teacher-not-a-model", "t.pt: not a readable checkpoint"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, photos, case, expect):
    data, out, extra = photos, tmp_path / "out", []
    if case == "missing":
        data = tmp_path / "nope"
    elif case == "empty":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "unreadable":
        data = tmp_path / "bad"
        data.mkdir()
        (data / "a.jpg").write_bytes(b"x")
        (data / "b.png").write_bytes(b"y")
    elif case == "out-under-file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "run"
    elif case == "out-is-file":
        out.write_text("x")
    elif case == "nothing-to-resume":
        extra = ["--resume"]
    elif case == "bad-width":
        extra = ["--width", "huge"]
    elif case == "bad-steps":
        extra = ["--steps", "0"]
    elif case == "bad-zoom":
        extra = ["--zoom", "0.5"]
    elif case == "bad-ema":
        extra = ["--ema", "1"]
    elif case == "bad-repeat":
        extra = ["--repeat", "a/*=0"]
    elif case == "repeat-matches-nothing":
        extra = ["--repeat", "imagenet_*=2"]
    elif case == "bad-members":
        extra = ["--members", "9"]
    elif case == "teacher-with-huber":
        (tmp_path / "t.pt").write_bytes(b"x")
        extra = ["--teacher", tmp_path / "t.pt"]
    elif case == "teacher-not-a-model":
        (tmp_path / "t.pt").write_bytes(b"not a checkpoint")
        extra = ["--teacher", tmp_path / "t.pt", "--loss", "classification", "--loss-option", "samples=20000"]
    r = _cli("--data", data, "--out", out, *TINY_ARGS, *extra)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0], r.output
    assert "Traceback" not in r.output
    if case.startswith("teacher"):
        assert lines[0].startswith("error: --teacher"), lines[0]
    if out.is_dir():
        assert not list(out.glob("*.pt"))


def test_resume_with_other_settings_is_refused_and_leaves_the_checkpoint(tiny_cfg, tmp_path, photos):
    train(tiny_cfg(steps=3))
    out = tmp_path / "run"
    before = (out / "last.pt").read_bytes()
    r = subprocess.run(CLI + ["train", "--data", str(photos), "--out", str(out), *TINY_ARGS, "--steps", "3",
                              "--batch-size", "8", "--resume"], capture_output=True, text=True, timeout=120,
                       env=subprocess_env())
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: --resume: {out / 'last.pt'} was made with other settings: batch_size 4 in the checkpoint, 8 now"]
    assert (out / "last.pt").read_bytes() == before
    with pytest.raises(ResumeError, match="seed 0 in the checkpoint, 1 now"):
        train(tiny_cfg(steps=3, seed=1, resume=True))
    r = _cli("--data", photos, "--out", out, *TINY_ARGS, "--steps", "3")
    assert r.exit_code == 2 and "pass --resume" in r.output


def test_repeat_is_logged_kept_in_the_checkpoint_and_must_match_on_resume(tiny_cfg, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        train(tiny_cfg(steps=4, stop_at_step=2, repeat=("a/*=3", "b/c/*=2")))
    # 12 photos, 1 validates; of the 11 training ones a/ holds 4 (x3) and b/c/ 4 (x2): 3 + 12 + 8 = 23
    assert "--repeat a/*=3 b/c/*=2: 8 of 11 photos repeat, 23 samples per epoch" in caplog.text
    path = tmp_path / "run" / "last.pt"
    assert load_checkpoint(path)["train_config"]["repeat"] == ("a/*=3", "b/c/*=2")
    with pytest.raises(ResumeError, match=r"repeat \('a/\*=3', 'b/c/\*=2'\) in the checkpoint, \('a/\*=3',\) now"):
        train(tiny_cfg(steps=4, repeat=("a/*=3",), resume=True))
    assert train(tiny_cfg(steps=4, repeat=("a/*=03", "b/c/*=2"), resume=True)).step == 4  # same counts, spelled otherwise


def test_every_member_learns_from_its_own_loss_and_resume_keeps_the_count(tiny_cfg, tmp_path, caplog):
    from engine.net.model import ColorizerNet

    settings = dict(steps=4, stop_at_step=2, members=2, loss="classification",
                    loss_options=LOSS_SETTINGS["classification"])
    with caplog.at_level(logging.INFO):
        train(tiny_cfg(**settings))
    assert "2 decoder member(s)" in caplog.text
    path = tmp_path / "run" / "last.pt"
    ckpt = load_checkpoint(path)
    config = ModelConfig.from_dict(ckpt["model_config"])
    assert config.members == 2 and ckpt["train_config"]["members"] == 2
    torch.manual_seed(0)  # the trainer seeds before it builds the network
    start = ColorizerNet(config).state_dict()
    for k in (0, 1):  # a member without a loss of its own would keep its initial weights
        key = f"members.{k}.head.conv.1.weight"
        assert not torch.equal(ckpt["model"][key], start[key]), key
    assert not torch.equal(ckpt["model"]["members.0.head.conv.1.weight"], ckpt["model"]["members.1.head.conv.1.weight"])
    with pytest.raises(ResumeError, match="members 2 in the checkpoint, 1 now"):
        train(tiny_cfg(**{**settings, "members": 1}, resume=True))
    assert train(tiny_cfg(**{**settings, "stop_at_step": None}, resume=True)).step == 4


def test_resume_of_a_checkpoint_from_before_zoom_existed(tiny_cfg, tmp_path):
    """Checkpoints written before ``--zoom`` have no such key: they were trained at zoom 1 and resume as such."""
    train(tiny_cfg(steps=4, stop_at_step=2))
    path = tmp_path / "run" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["train_config"]["zoom"]
    torch.save(ckpt, path)
    with pytest.raises(ResumeError, match="zoom 1.0 in the checkpoint, 2.0 now"):
        train(tiny_cfg(steps=4, zoom=2.0, resume=True))
    assert train(tiny_cfg(steps=4, resume=True)).step == 4


# ----------------------------------------------------------------------------- kill -9


def test_kill_9_during_training_then_resume(tmp_path, photos):
    out = tmp_path / "run"
    args = CLI + ["train", "--data", str(photos), "--out", str(out), *TINY_ARGS, "--steps", "120",
                  "--val-every", "2", "--log-every", "20"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env())
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            metrics = out / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 5:
                break
            time.sleep(0.02)
        time.sleep(0.137)  # land somewhere inside a step or a save
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()
    step = load_checkpoint(out / "last.pt")["step"]
    assert 10 <= step < 120
    load_model(out / "last.pt")
    r = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert r.returncode == 0, r.stderr
    assert f"resuming from {out / 'last.pt'} at step {step}/120" in r.stderr
    assert "done: step 120/120" in r.stderr
    assert load_checkpoint(out / "last.pt")["step"] == 120
    steps = [m["step"] for m in read_metrics(out / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 120
    assert not list(out.glob(".*.tmp-*"))


def test_ema_is_validated_saved_resumed_exactly_and_released(tiny_cfg, tmp_path, caplog):
    from engine.net.checkpoint import release_checkpoint

    kw = dict(steps=8, ema=0.9)
    full = train(tiny_cfg(out=str(tmp_path / "full"), **kw))
    train(tiny_cfg(out=str(tmp_path / "part"), stop_at_step=5, **kw))
    with caplog.at_level(logging.INFO):
        train(tiny_cfg(out=str(tmp_path / "part"), resume=True, **kw))
    assert "; average: psnr" in caplog.text
    ckpt = load_checkpoint(tmp_path / "full" / "last.pt")
    ema = ckpt["ema"]
    assert ema["decay"] == 0.9 and ema["updates"] == 8
    _assert_same_state(ema["model"], load_checkpoint(tmp_path / "part" / "last.pt")["ema"]["model"])
    assert any(not torch.equal(ema["model"][k], ckpt["model"][k]) for k in ckpt["model"])
    rows = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert all(math.isfinite(r["ema_val_psnr"]) and r["ema_colourfulness_ratio"] >= 0 for r in rows)
    assert full.best_psnr == max(r["ema_val_psnr"] for r in rows)  # best.pt follows what is shipped
    release_checkpoint(tmp_path / "full" / "last.pt", tmp_path / "avg.pt")
    release_checkpoint(tmp_path / "full" / "last.pt", tmp_path / "live.pt", weights="model")
    avg, data = load_model(tmp_path / "avg.pt")
    assert data["release"]["weights"] == "ema (decay 0.9, 8 updates)"
    _assert_same_state(avg.state_dict(), ema["model"])
    _assert_same_state(load_model(tmp_path / "live.pt")[0].state_dict(), ckpt["model"])


def test_ema_resume_needs_the_same_decay_and_an_average(tiny_cfg, tmp_path):
    from engine.net.checkpoint import CheckpointError, release_checkpoint

    train(tiny_cfg(stop_at_step=3))
    with pytest.raises(ResumeError, match=r"ema 0\.0 in the checkpoint, 0\.9 now"):
        train(tiny_cfg(resume=True, ema=0.9))
    with pytest.raises(CheckpointError, match="has no weight average"):
        release_checkpoint(tmp_path / "run" / "last.pt", tmp_path / "x.pt", weights="ema")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["ema"] is None


def test_ema_skips_a_step_the_amp_scaler_skipped(tiny_cfg, tmp_path, monkeypatch):
    """fp16 AMP (CUDA only) skips steps with inf gradients and lowers its scale: the average must not count them."""

    class SkippingScaler:  # GradScaler's contract as the trainer uses it; step 3 has "inf gradients"
        def __init__(self, *args, **kwargs):
            self.calls, self.value = 0, 2.0**16

        def is_enabled(self):
            return True

        def scale(self, loss):
            return loss

        def step(self, optimizer):
            self.calls += 1
            if self.calls != 3:
                optimizer.step()

        def update(self):
            if self.calls == 3:
                self.value /= 2

        def get_scale(self):
            return self.value

        def state_dict(self):
            return {"scale": self.value}

    monkeypatch.setattr(torch.amp, "GradScaler", SkippingScaler)
    train(tiny_cfg(steps=6, ema=0.9))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["ema"]["updates"] == 5


def test_a_student_learns_from_a_teachers_distribution_and_resume_checks_the_teacher(tiny_cfg, tmp_path, caplog):
    from train.config import TrainConfigError
    from train.teacher import TeacherError, file_digest

    cls = dict(loss="classification", loss_options=LOSS_SETTINGS["classification"])
    train(tiny_cfg(out=str(tmp_path / "teacher"), steps=3, members=2, **cls))
    teacher = tmp_path / "teacher" / "last.pt"
    plain = train(tiny_cfg(out=str(tmp_path / "plain"), steps=4, **cls))
    with caplog.at_level(logging.INFO):
        taught = train(tiny_cfg(out=str(tmp_path / "taught"), steps=4, stop_at_step=2, teacher=str(teacher), **cls))
    assert "teacher: last.pt (2 member(s)), share 0.50" in caplog.text
    ckpt = load_checkpoint(tmp_path / "taught" / "last.pt")
    assert ckpt["train_config"]["teacher"] == file_digest(teacher)  # its content, not its path
    assert taught.step == 2 and plain.step == 4
    # same seed, same crops: only the teacher's share of the target differs
    partial = train(tiny_cfg(out=str(tmp_path / "plain2"), steps=4, stop_at_step=2, **cls))
    assert partial.step == 2
    a, b = _state(tmp_path / "plain2" / "last.pt"), _state(tmp_path / "taught" / "last.pt")
    assert not torch.equal(a["members.0.head.conv.1.weight"], b["members.0.head.conv.1.weight"])
    # resume: the teacher is compared by content, so a copy elsewhere is the same teacher and another model is not
    moved = tmp_path / "moved.pt"
    moved.write_bytes(teacher.read_bytes())
    other = tmp_path / "plain" / "last.pt"
    with pytest.raises(ResumeError, match="teacher .* in the checkpoint, .* now"):
        train(tiny_cfg(out=str(tmp_path / "taught"), steps=4, teacher=str(other), resume=True, **cls))
    assert train(tiny_cfg(out=str(tmp_path / "taught"), steps=4, teacher=str(moved), resume=True, **cls)).step == 4
    # a teacher that cannot teach this run
    with pytest.raises(TrainConfigError, match="--teacher: expected --loss classification .* found huber"):
        train(tiny_cfg(out=str(tmp_path / "x"), teacher=str(teacher)))
    with pytest.raises(TrainConfigError, match="--teacher .*missing.pt: no such file"):
        train(tiny_cfg(out=str(tmp_path / "x"), teacher=str(tmp_path / "missing.pt"), **cls))
    train(tiny_cfg(out=str(tmp_path / "huber"), steps=3))
    with pytest.raises(TeacherError, match="expected a model with a classification head, found regression"):
        train(tiny_cfg(out=str(tmp_path / "y"), teacher=str(tmp_path / "huber" / "last.pt"), **cls))
    coarse = {**cls, "loss_options": {**cls["loss_options"], "grid": 0.1}}
    with pytest.raises(TeacherError, match=r"its \d+ colour bins differ from the \d+ this run's training photos give"):
        train(tiny_cfg(out=str(tmp_path / "z"), teacher=str(teacher), **coarse))
