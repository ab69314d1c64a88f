"""``TrainConfig``: every option of ``cli.py train``, validated before any work starts."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.core.errors import ColorizerError
from train.data import DataError, parse_repeat
from train.losses import build_loss
from engine.net.encoders import check_pretrained_installed
from engine.net.model import MAX_MEMBERS, ModelConfig

# Settings a ``--resume`` must share with the checkpoint (plus the world size and the
# fingerprints of the train and validation file lists, added by the trainer).
RESUME_KEYS = ("teacher", "members", "repeat", "encoder_bn", "encoder", "encoder_lr_mult", "encoder_freeze", "width", "width_mult", "image_size", "zoom", "batch_size", "steps", "lr", "warmup_steps", "loss",
               "loss_options", "ema", "seed", "val_fraction", "world_size", "train_files", "val_files")
# what a checkpoint from before a key existed was trained with
RESUME_DEFAULTS = {"zoom": 1.0, "ema": 0.0, "encoder": "vgg", "encoder_lr_mult": 1.0, "encoder_freeze": 0, "repeat": (),
                   "encoder_bn": "adapt", "members": 1, "teacher": None}


class TrainConfigError(ColorizerError, ValueError):
    """A training option is out of range."""


@dataclass
class TrainConfig:
    data: str
    out: str
    val: str | None = None
    val_fraction: float | None = None  # default 0.1 when ``val`` / ``val_list`` are not given
    val_list: str | None = None  # text file of paths relative to ``data``: they validate, the rest train
    exclude: tuple[str, ...] = ()  # glob patterns on relative paths: training files left out
    repeat: tuple[str, ...] = ()  # "GLOB=N": matching training photos stand N times in every epoch
    encoder: str = "vgg"
    encoder_lr_mult: float = 1.0  # learning rate of the encoder relative to --lr (0 = frozen weights)
    encoder_freeze: int = 0  # the encoder's first N feature levels (shallow to deep) keep their weights
    encoder_bn: str = "adapt"  # "frozen": the encoder's BatchNorm layers keep their (pretrained) statistics
    members: int = 1  # decoder members on one encoder; the model outputs their mean
    teacher: str | None = None  # a classification model whose colour distribution this run also learns (train.teacher)
    width: str = "seed"
    width_mult: float = 1.0
    image_size: int = 128
    zoom: float = 1.0  # scale augmentation (train.data.TrainSet); 1 = crops at one scale
    batch_size: int = 16  # per process
    steps: int = 2000
    lr: float = 1e-3
    warmup_steps: int | None = None  # default min(500, steps // 20)
    loss: str = "huber"
    loss_options: dict[str, Any] = field(default_factory=dict)
    ema: float = 0.0  # decay of the weight average (train.ema); 0 = off
    resume: bool = False
    amp: bool = False
    seed: int = 0
    workers: int = 2
    log_every: int = 50
    val_every: int = 500
    val_limit: int = 500
    device: str = "auto"
    cache: str | None = None
    stop_at_step: int | None = None  # stop early (with a checkpoint) at this step; tests, preemptible jobs

    def resolved(self) -> "TrainConfig":
        for name in ("image_size", "batch_size", "steps", "log_every", "val_every", "val_limit"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')}: expected >= 1, found {getattr(self, name)}")
        if not 1.0 <= self.zoom <= 4.0:
            raise TrainConfigError(f"--zoom: expected 1 to 4, found {self.zoom}")
        if not (self.ema == 0 or 0.5 <= self.ema < 1):
            raise TrainConfigError(f"--ema: expected 0 (off) or a decay from 0.5 to below 1, found {self.ema}")
        if not self.lr > 0:
            raise TrainConfigError(f"--lr: expected > 0, found {self.lr}")
        given = [name for name, v in (("--val", self.val), ("--val-fraction", self.val_fraction),
                                      ("--val-list", self.val_list)) if v is not None]
        if len(given) > 1:
            raise TrainConfigError(f"{' and '.join(given)} exclude each other")
        if not 0 <= self.encoder_lr_mult <= 10:
            raise TrainConfigError(f"--encoder-lr-mult: expected 0 to 10, found {self.encoder_lr_mult}")
        if not 1 <= self.members <= MAX_MEMBERS:
            raise TrainConfigError(f"--members: expected 1 to {MAX_MEMBERS}, found {self.members}")
        model = ModelConfig(self.width, self.width_mult, encoder=self.encoder, members=self.members)
        levels = len(model.widths)  # raises ModelConfigError early
        if not 0 <= self.encoder_freeze <= levels:
            raise TrainConfigError(f"--encoder-freeze: expected 0 to {levels} (the {self.encoder} encoder's feature "
                                   f"levels), found {self.encoder_freeze}")
        if self.encoder_bn not in ("adapt", "frozen"):
            raise TrainConfigError(f"--encoder-bn: expected adapt or frozen, found {self.encoder_bn!r}")
        if self.encoder_bn == "frozen" and not model.pretrained:
            raise TrainConfigError(f"--encoder-bn frozen: expected a pretrained encoder (efficientnet-lite*), found "
                                   f"{self.encoder} (trained from scratch, it has no statistics to keep)")
        if model.pretrained and not self.resume:
            check_pretrained_installed(self.encoder)
        loss = build_loss(self.loss, self.loss_options)  # unknown loss or bad options: fail before any decoding
        if self.teacher is not None:
            if not loss.accepts_teacher:
                raise TrainConfigError(f"--teacher: expected --loss classification (a loss that learns a colour "
                                       f"distribution), found {self.loss}")
            if not os.path.isfile(self.teacher):
                raise TrainConfigError(f"--teacher {self.teacher}: no such file")
        c = TrainConfig(**asdict(self))
        c.exclude = tuple(c.exclude)
        try:
            c.repeat = tuple(f"{glob}={n}" for glob, n in parse_repeat(c.repeat))
        except DataError as e:
            raise TrainConfigError(str(e)) from e
        explicit = c.val is not None or c.val_list is not None
        c.val_fraction = None if explicit else (0.1 if c.val_fraction is None else c.val_fraction)
        c.warmup_steps = min(500, c.steps // 20) if c.warmup_steps is None else c.warmup_steps
        if c.warmup_steps < 0:
            raise TrainConfigError(f"--warmup-steps: expected >= 0, found {c.warmup_steps}")
        return c
