"""Two-process DistributedDataParallel on the CPU (gloo), through the real CLI under torchrun."""

import re
import subprocess
import sys

import pytest
import torch

from train import distributed as dist
from engine.net.checkpoint import load_model
from engine.net.model import ColorizerNet, ModelConfig
from tests.conftest import ROOT, TINY_MODEL
from tests.train.conftest import subprocess_env

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TINY_ARGS = ["--width-mult", "0.125", "--image-size", "32", "--batch-size", "2", "--workers", "1"]


def test_two_processes_train_identical_replicas_and_rank0_alone_writes(tmp_path, photos):
    out = tmp_path / "run"
    r = subprocess.run(TORCHRUN + [str(ROOT / "cli.py"), "train", "--data", str(photos), "--out", str(out),
                                   *TINY_ARGS, "--steps", "4", "--val-every", "2", "--log-every", "2"],
                       capture_output=True, text=True, timeout=180, env=subprocess_env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stderr
    # Rank 0 alone logs: every line once.
    assert log.count("batch 2 x 2 process(es)") == 1
    assert log.count("\nstep 4/4 ") == 1 and log.count("done: step 4/4") == 1
    m = re.search(r"weights identical on 2 ranks \(sha256 ([0-9a-f]{64})\)", log)
    assert m, log[-3000:]
    # The checkpoint rank 0 wrote is those very weights.
    model, ckpt = load_model(out / "last.pt")
    assert dist.state_sha256(model) == m.group(1)
    assert ckpt["step"] == 4 and ckpt["train_config"]["world_size"] == 2
    # A --resume with another world size is refused (the data order depends on it).
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--data", str(photos), "--out", str(out),
                        *TINY_ARGS, "--steps", "4", "--resume"], capture_output=True, text=True, timeout=120,
                       env=subprocess_env(), cwd=ROOT)
    assert r.returncode == 2 and "world_size 2 in the checkpoint, 1 now" in r.stderr


def test_an_error_on_rank0_stops_every_rank_without_a_hang(tmp_path, photos):
    r = subprocess.run(TORCHRUN + [str(ROOT / "cli.py"), "train", "--data", str(photos), "--out",
                                   str(tmp_path / "run"), *TINY_ARGS, "--steps", "2", "--resume"],
                       capture_output=True, text=True, timeout=120, env=subprocess_env(), cwd=ROOT)
    assert r.returncode != 0
    assert r.stderr.count("error: --resume:") == 2  # rank 0's own error, re-raised on rank 1
    assert "nothing to resume" in r.stderr


def test_single_process_defaults():
    info = dist.init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    assert dist.run_on_main(info, lambda: 42) == 42
    assert dist.all_reduce_mean(info, torch.tensor(3.0)).item() == 3.0


def test_state_hash_sees_every_weight_and_buffer():
    torch.manual_seed(0)
    a = ColorizerNet(ModelConfig.from_dict(TINY_MODEL))
    b = ColorizerNet(ModelConfig.from_dict(TINY_MODEL))
    b.load_state_dict(a.state_dict())
    assert dist.state_sha256(a) == dist.state_sha256(b)
    with torch.no_grad():
        b.encoder.blocks[0][0][1].running_mean[0] += 1e-6
    assert dist.state_sha256(a) != dist.state_sha256(b)


@pytest.mark.parametrize("requested", ["cuda", "cuda:0"])
def test_cuda_device_without_cuda_is_a_clear_error(requested):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(dist.ColorizerError, match="CUDA is not available"):
        dist.resolve_device(requested)


@pytest.mark.parametrize("clean", [True, False])
def test_close_waits_for_every_rank_only_after_a_clean_run(monkeypatch, clean):
    import torch.distributed as tdist

    calls = []
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(tdist, "barrier", lambda *a, **k: calls.append("barrier"))
    monkeypatch.setattr(tdist, "destroy_process_group", lambda *a, **k: calls.append("destroy"))
    dist.close(dist.DistInfo(rank=0, world_size=2, device=torch.device("cpu"), backend="gloo"), clean=clean)
    assert calls == (["barrier", "destroy"] if clean else ["destroy"])
