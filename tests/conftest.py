"""Shared fixtures. Tests may read ../shared (training photos); run-time code never does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.core import hardware

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRAIN_PHOTOS = SHARED / "data" / "train"
SAMPLES = ROOT / "samples"

TINY_MODEL = {"width": "seed", "width_mult": 0.125, "head": "regression", "head_options": {}}


HAS_CUDA = hardware.cuda_device_count() > 0  # from the driver: a stub tensorrt or CPU torch cannot fake it


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.device_count() == 0 here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised tiny model saved as a real checkpoint (fixed seed)."""
    import torch

    from engine.net.checkpoint import save_checkpoint
    from engine.net.model import ColorizerNet, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig.from_dict(TINY_MODEL)
    model = ColorizerNet(config)
    # Non-trivial BN statistics and chroma so parity tests compare real colours.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        model.members[0].head.conv.weight.mul_(20.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {"model_config": config.to_dict(), "model": model.state_dict(), "step": 0})
    return path


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance (2 CPUs) for one test module, so Ray starts once per module; skips without Ray."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (the cluster extra): pip install -e '.[cluster]'")
    pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install -e '.[cluster]'")
    import logging

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, object_store_memory=512 << 20)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, tmp_path_factory) -> Path:
    """FP32 ONNX export of ``tiny_checkpoint`` (parity-checked), with its sidecar ``tiny.json`` beside it."""
    from export.to_onnx import export_checkpoint

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_checkpoint(tiny_checkpoint, path, precision="fp32")
    return path


@pytest.fixture(autouse=True)
def _isolate_logging_levels():
    """Entry points called in-process (benchmark mains, CLI) set logger levels; undo that after each test."""
    import logging

    manager = logging.root.manager
    before = {name: lg.level for name, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    root_level = logging.root.level
    yield
    logging.root.setLevel(root_level)
    for name, lg in list(manager.loggerDict.items()):
        if isinstance(lg, logging.Logger):
            lg.setLevel(before.get(name, logging.NOTSET))


@pytest.fixture()
def one_thread():
    """Tiny models run faster (and steadier on a shared 2-core box) on one intra-op thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def read_only_dir(tmp_path):
    """An empty folder nobody can write into: permission bits for a user, a read-only bind mount for root.

    CI runs as root, where permission bits do not bite; skips where neither works.
    """
    import os
    import subprocess

    ro = tmp_path / "read-only"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o500)
        yield ro
        ro.chmod(0o700)
        return
    if subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True).returncode:
        pytest.skip("needs a read-only bind mount (mount refused)")
    try:
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=True)
