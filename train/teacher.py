"""``cli.py train --teacher MODEL``: a trained classification model whose colour distribution a new model learns.

The teacher (typically several merged runs, ``cli.py release A.pt B.pt C.pt``) runs in eval mode beside the
model being trained, on the same crops, without gradients. Its members' softmax distributions (T = 1) are
averaged per pixel; the classification loss mixes that distribution into each pixel's target (loss option
``teacher``). A one-member student trained this way approaches the accuracy of the many-member teacher at the
cost of one decoder at inference.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.core.contract import sha256_file
from engine.core.errors import ColorizerError
from engine.net.checkpoint import CheckpointError, load_model


class TeacherError(ColorizerError, ValueError):
    """The teacher model cannot teach this training run."""


def file_digest(path: str | os.PathLike[str]) -> str:
    """Short SHA-256 of the teacher file: what ``--resume`` compares (paths move, contents must not)."""
    return sha256_file(path)[:16]


class Teacher:
    """Loads ``path`` and checks that it predicts over the same colour bins as the training loss.

    ``centres``: ``(K, 2)`` bin centres of the run's classification loss; ``stride``: its logit stride.
    Raises ``TeacherError`` naming the file and the reason.
    """

    def __init__(self, path: str | os.PathLike[str], centres: torch.Tensor, stride: int,
                 device: torch.device) -> None:
        self.path = Path(path)
        try:
            net, _ = load_model(self.path)
        except CheckpointError as e:
            raise TeacherError(f"--teacher {e}") from e
        config = net.config
        if config.head != "classification":
            raise TeacherError(f"--teacher {self.path}: expected a model with a classification head, found "
                               f"{config.head}")
        theirs = torch.as_tensor(config.head_options.get("centres"), dtype=torch.float32).reshape(-1, 2)
        ours = centres.detach().float().cpu().reshape(-1, 2)
        if theirs.shape != ours.shape or not torch.allclose(theirs, ours, atol=1e-6):
            raise TeacherError(f"--teacher {self.path}: its {len(theirs)} colour bins differ from the {len(ours)} "
                               f"this run's training photos give (expected a teacher trained on the same photos "
                               f"with the same loss grid)")
        if int(config.head_options.get("stride", 4)) != int(stride):
            raise TeacherError(f"--teacher {self.path}: expected logit stride {stride}, found "
                               f"{config.head_options.get('stride')}")
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net.to(device, memory_format=torch.channels_last).eval()
        self.members = config.members

    @torch.no_grad()
    def probs(self, y: torch.Tensor) -> torch.Tensor:
        """``y``: ``(N, 1, H, W)`` luma as the trainer feeds it -> ``(N, K, H/stride, W/stride)`` mean distribution."""
        outputs = self.net.forward_train(y)
        return torch.stack([F.softmax(out["logits"].float(), dim=1) for out in outputs]).mean(0)
