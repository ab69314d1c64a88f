"""The colorization network: an encoder, a hypercolumn decoder, a chroma head.

Input: Y, float32 ``(N, 1, H, W)`` in [0, 1] (colour spec luma), any H, W >= 1.
Output: UV, float32 ``(N, 2, H, W)``, U in ±0.436, V in ±0.615 (``engine.core.color``).

Encoder (``engine.net.encoders``, ``ModelConfig.encoder``): ``vgg`` (VGG blocks from scratch,
features at strides 1, 2, 4, 8) or ``efficientnet-lite0/1/2`` (ImageNet-pretrained trunk,
strides 2 to 32). Decoder: from the deepest feature map upwards, features are projected by
a 1x1 conv, upsampled bilinearly to the next scale's exact size, added to that scale's
feature map (the hypercolumn skip-add), and refined by a 3x3 conv-BN-ReLU (at the finest
level only a ReLU: the head's 3x3 conv does the mixing there, at a fraction of the cost).
Encoders whose channels are not the decoder's widths get a 1x1 lateral conv per scale.
The head (regression: 3x3 conv, tanh, scaled to the U/V ranges; classification: logits
over chroma bins decoded by annealed mean) returns UV at the input's full resolution.

Members (``ModelConfig.members``, K >= 1): the encoder runs once and K decoder members
(lateral convs, decoder, head; each its own weights) read its features; the output is the
mean of their UV, an ensemble inside one graph at the price of K decoders and one encoder.
Each member trains with its own loss (``forward_train`` returns one dict per member).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.core.color import U_MAX, V_MAX
from engine.core.errors import ColorizerError
from engine.net.encoders import ENCODERS, LITE_SPECS, EfficientNetLiteEncoder, VGGEncoder, conv_bn_relu

WIDTH_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "seed": (64, 128, 192, 256),
    "vgg16": (64, 128, 256, 512),
}
# decoder widths (finest first) under a pretrained encoder, scaled by width_mult
LITE_DECODER_WIDTHS = (32, 48, 64, 96, 128)
MAX_MEMBERS = 8


class ModelConfigError(ColorizerError, ValueError):
    """A model configuration that cannot be built or does not match a checkpoint."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; stored in checkpoints and sidecars."""

    width: str = "seed"
    width_mult: float = 1.0
    head: str = "regression"
    head_options: dict[str, Any] = field(default_factory=dict)
    encoder: str = "vgg"
    members: int = 1

    @property
    def widths(self) -> tuple[int, ...]:
        """Decoder widths, finest scale first (under ``vgg`` also the encoder's)."""
        if self.encoder not in ENCODERS:
            raise ModelConfigError(f"encoder: expected one of {list(ENCODERS)}, found {self.encoder!r}")
        if self.width not in WIDTH_PRESETS:
            raise ModelConfigError(f"width preset: expected one of {sorted(WIDTH_PRESETS)}, found {self.width!r}")
        if not self.width_mult > 0:
            raise ModelConfigError(f"width_mult: expected > 0, found {self.width_mult}")
        if not (isinstance(self.members, int) and 1 <= self.members <= MAX_MEMBERS):
            raise ModelConfigError(f"members: expected an integer from 1 to {MAX_MEMBERS}, found {self.members!r}")
        base = WIDTH_PRESETS[self.width] if self.encoder == "vgg" else LITE_DECODER_WIDTHS
        return tuple(max(4, int(round(c * self.width_mult))) for c in base)

    @property
    def pretrained(self) -> bool:
        """Whether training starts the encoder from ImageNet weights."""
        return self.encoder in LITE_SPECS

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names - {"widths"}
        if unknown:
            raise ModelConfigError(f"model config: unknown keys {sorted(unknown)}")
        # no "encoder": made before the choice, vgg; no "members": made before ensembles, one
        return cls(**{k: v for k, v in d.items() if k in names})


class HypercolumnDecoder(nn.Module):
    """Upsampling decoder: project, upsample to the skip's size, add the skip, refine."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.project = nn.ModuleList()
        self.refine = nn.ModuleList()
        pairs = list(zip(widths[:0:-1], widths[-2::-1]))
        for i, (deep, shallow) in enumerate(pairs):
            self.project.append(nn.Conv2d(deep, shallow, 1))
            # Full resolution (the last level) gets no 3x3 refinement: it would cost as much
            # as the encoder below it, and the head's own 3x3 conv mixes the sum there.
            full_res = i == len(pairs) - 1
            self.refine.append(nn.ReLU() if full_res else conv_bn_relu(shallow, shallow))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for proj, refine, skip in zip(self.project, self.refine, feats[-2::-1]):
            x = F.interpolate(proj(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = refine(x + skip)
        return x


class RegressionHead(nn.Module):
    """3x3 conv to 2 channels, tanh, scaled to the U/V ranges of the colour spec."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, 2, 3, padding=1)
        self.register_buffer("scale", torch.tensor([U_MAX, V_MAX]).view(1, 2, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | torch.Size | None = None) -> torch.Tensor:
        uv = torch.tanh(self.conv(x)) * self.scale
        return uv if size is None else F.interpolate(uv, size=size, mode="bilinear", align_corners=False)


class ClassificationHead(nn.Module):
    """Logits over quantized chroma bins at 1/``stride`` resolution, decoded by annealed mean.

    Options (stored in ``ModelConfig.head_options``): ``centres`` (K x 2 bin centres in
    U/V units, from ``engine.net.chroma_bins``), ``temperature`` (annealed-mean T used by
    ``forward`` and so by the exported graph), ``stride`` (logit resolution divisor).
    ``forward`` returns full-resolution UV, like the regression head, so the export
    and engine contract does not change.
    """

    def __init__(self, cin: int, centres: list[list[float]], temperature: float = 0.2, stride: int = 4,
                 feature_stride: int = 1) -> None:
        super().__init__()
        from engine.net.chroma_bins import annealed_mean

        self._annealed_mean = annealed_mean
        c = torch.tensor(centres, dtype=torch.float32)
        if c.ndim != 2 or c.shape[1] != 2 or c.shape[0] < 2:
            raise ModelConfigError(f"classification head: centres must be (K>=2, 2), found {tuple(c.shape)}")
        if not temperature > 0:
            raise ModelConfigError(f"classification head: temperature must be > 0, found {temperature}")
        self.register_buffer("centres", c, persistent=False)
        self.temperature = float(temperature)
        self.stride = int(stride)
        self.pool = max(1, self.stride // int(feature_stride))  # the features come at 1/feature_stride already
        self.conv = nn.Sequential(conv_bn_relu(cin, cin), nn.Conv2d(cin, c.shape[0], 1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool, ceil_mode=True)
        return self.conv(x)

    def decode(self, logits: torch.Tensor, size: tuple[int, int] | torch.Size, temperature: float) -> torch.Tensor:
        uv = self._annealed_mean(logits, self.centres, temperature)
        return F.interpolate(uv, size=size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | torch.Size | None = None) -> torch.Tensor:
        return self.decode(self.logits(x), x.shape[-2:] if size is None else size, self.temperature)

    def train_outputs(self, x: torch.Tensor, size: tuple[int, int] | torch.Size | None = None) -> dict[str, torch.Tensor]:
        logits = self.logits(x)
        return {"logits": logits, "uv": self.decode(logits, x.shape[-2:] if size is None else size, 1.0)}


HEADS: dict[str, type[nn.Module]] = {"regression": RegressionHead, "classification": ClassificationHead}


class DecoderMember(nn.Module):
    """One member: lateral 1x1 convs (pretrained encoders only), the hypercolumn decoder, the head."""

    def __init__(self, config: ModelConfig, channels: tuple[int, ...] | None, feature_stride: int) -> None:
        super().__init__()
        widths = config.widths
        self.lateral = None if channels is None else nn.ModuleList(nn.Conv2d(c, w, 1) for c, w in zip(channels, widths))
        self.decoder = HypercolumnDecoder(widths)
        options = dict(config.head_options)
        if config.head == "classification":
            options["feature_stride"] = feature_stride
        self.head = HEADS[config.head](widths[0], **options)

    def features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Decoder output at the finest scale, ``(N, widths[0], H / s, W / s)``."""
        if self.lateral is not None:
            feats = [lat(f) for lat, f in zip(self.lateral, feats)]
        return self.decoder(feats)


class MemberMean(nn.Module):
    """The members' UV averaged: ``K x (N, 2, H, W)`` -> ``(N, 2, H, W)``."""

    def forward(self, uvs: list[torch.Tensor]) -> torch.Tensor:
        total = uvs[0]
        for uv in uvs[1:]:
            total = total + uv
        return total * (1.0 / len(uvs))


class ColorizerNet(nn.Module):
    """Y ``(N,1,H,W)`` in [0,1] -> UV ``(N,2,H,W)`` in the colour spec's ranges."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        widths = self.config.widths
        if self.config.head not in HEADS:
            raise ModelConfigError(f"head: expected one of {sorted(HEADS)}, found {self.config.head!r}")
        if self.config.encoder == "vgg":
            self.encoder: nn.Module = VGGEncoder(widths)
            channels = None
        else:
            self.encoder = EfficientNetLiteEncoder(self.config.encoder)
            channels = self.encoder.channels
        # the finest features come at 1/feature_stride: the head brings UV back to the input's size
        self.feature_stride = self.encoder.strides[0]
        self.members = nn.ModuleList(DecoderMember(self.config, channels, self.feature_stride)
                                     for _ in range(self.config.members))
        self.mean = MemberMean()
        self.register_load_state_dict_pre_hook(_single_member_keys)

    @property
    def heads(self) -> list[nn.Module]:
        return [m.head for m in self.members]

    def set_temperature(self, temperature: float) -> None:
        """Set every member's annealed-mean T (classification heads only)."""
        if self.config.head != "classification":
            raise ModelConfigError(f"temperature: expected a classification head, found {self.config.head!r}")
        if not temperature > 0:
            raise ModelConfigError(f"temperature: expected a value > 0, found {temperature}")
        for head in self.heads:
            head.temperature = float(temperature)

    def _size(self, y: torch.Tensor) -> torch.Size | None:
        return None if self.feature_stride == 1 else y.shape[-2:]

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(y)
        size = self._size(y)
        uvs = [m.head(m.features(feats), size) for m in self.members]
        return uvs[0] if len(uvs) == 1 else self.mean(uvs)

    def forward_train(self, y: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """What the losses see, one dict per member: ``{"uv": ...}`` plus head-specific tensors (e.g. logits)."""
        feats = self.encoder(y)
        size = self._size(y)
        outputs = []
        for m in self.members:
            x = m.features(feats)
            extra = getattr(m.head, "train_outputs", None)
            outputs.append(extra(x, size) if extra is not None else {"uv": m.head(x, size)})
        return outputs

    def load_pretrained_encoder(self) -> None:
        """Start the encoder from its ImageNet weights (``PretrainedWeightsError`` if not installed)."""
        if isinstance(self.encoder, EfficientNetLiteEncoder):
            self.encoder.load_pretrained()


_MEMBER_PARTS = ("lateral.", "decoder.", "head.")


def _single_member_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Weights saved before members existed (``lateral.*``, ``decoder.*``, ``head.*``) load as member 0."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if rest.startswith(_MEMBER_PARTS):
            state_dict[f"{prefix}members.0.{rest}"] = state_dict.pop(key)


def build_model(config: ModelConfig) -> ColorizerNet:
    return ColorizerNet(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
