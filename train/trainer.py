"""The training loop behind ``python cli.py train``.

``train(TrainConfig(...))`` lists and caches the photos (``train.data``), builds the
loss (``train.losses``) and the model for the head it asks for, and runs Adam with
linear warm-up then cosine decay. Every ``log_every`` steps it logs loss, img/s and
ETA (a tqdm bar instead when stderr is a terminal); every ``val_every`` steps it
scores fixed centre crops of the validation split (PSNR of the RGB composed from
predicted chroma and true luma, Hasler–Süsstrunk colourfulness), appends a line to
``RUN_DIR/metrics.jsonl`` and writes ``RUN_DIR/last.pt`` (and ``best.pt`` when the
validation PSNR is the best so far) atomically; a run that reached its last step
also gets ``RUN_DIR/DONE`` (what ``cli.py score-runs`` scores). With ``ema`` > 0 a moving average of
the weights (``train.ema``) is kept too, scored beside the live weights (``ema_*``
metrics) and saved in the checkpoint; ``best.pt`` then follows the average's PSNR,
since that is what ``release_checkpoint`` ships.

Resume (``resume=True``) continues from ``RUN_DIR/last.pt`` at its exact step: the
batches are a function of seed and step, and the checkpoint carries optimizer,
scheduler, AMP scaler and RNG states. The settings in ``RESUME_KEYS`` (and the file
lists) must equal the checkpoint's; ``log_every``, ``val_every``, ``workers``,
``device``, ``amp`` and ``cache`` may change.

A step whose loss (mean over ranks) or gradient is NaN/inf is skipped (no update);
more than ``MAX_BAD_STEPS`` in a row stops training with ``TrainingDiverged``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.core.errors import ColorizerError
from train import data as D
from train import distributed as dist
from train import rundir
from engine.net.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from train.config import RESUME_DEFAULTS, RESUME_KEYS, TrainConfig
from train.ema import WeightEMA
from train.losses import build_loss
from train.teacher import Teacher, file_digest
from engine.net.model import ColorizerNet, ModelConfig, count_parameters
from train.rundir import OutputError
from train.validation import validate

log = logging.getLogger(__name__)

MAX_BAD_STEPS = 5


class ResumeError(CheckpointError):
    """``--resume`` is impossible: no checkpoint, or one made with other settings."""


class TrainingDiverged(ColorizerError):
    """Too many consecutive steps with a non-finite loss."""


@dataclass
class TrainResult:
    step: int
    checkpoint: str
    best_psnr: float | None
    metrics: dict[str, Any]
    state_sha256: str
    img_per_s: float
    resumed_from: int | None


def lr_factor(step: int, steps: int, warmup: int, floor: float = 0.02) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class _TrainForward(nn.Module):
    """Lets DDP wrap ``forward_train`` (DDP only hooks ``forward``)."""

    def __init__(self, net: ColorizerNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, y: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.net.forward_train(y)


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) one training; raises ``ColorizerError`` subclasses on bad input."""
    cfg = config.resolved()
    info = dist.init_distributed(cfg.device)
    if not info.is_main:
        logging.getLogger("train").setLevel(logging.ERROR)
    try:
        result = Trainer(cfg, info).run()
    except BaseException:
        dist.close(info, clean=False)
        raise
    dist.close(info)
    return result


class Trainer:
    def __init__(self, cfg: TrainConfig, info: dist.DistInfo) -> None:
        self.cfg, self.info = cfg, info
        self.out = Path(cfg.out)
        self.cache_dir = Path(cfg.cache) if cfg.cache else self.out / "cache"
        self._lock_fd: int | None = None
        self._ckpt: dict[str, Any] | None = None
        self._bad_run: list[int] = []  # steps of the current run of skipped (non-finite) steps

    # ------------------------------------------------------------------ setup

    def run(self) -> TrainResult:
        cfg, info = self.cfg, self.info
        files = D.list_images(cfg.data)
        if cfg.val is not None:
            train_files, val_files = files, D.list_images(cfg.val)
        elif cfg.val_list is not None:
            train_files, val_files = D.split_by_list(files, cfg.val_list)
        else:
            train_files, val_files = D.split_files(files, cfg.val_fraction or 0.0)
        train_files = D.exclude_files(train_files, cfg.exclude)
        short = D.cache_short_side(cfg.image_size, cfg.zoom)
        # the teacher by content, not by path (a moved file is the same teacher)
        teacher = None if cfg.teacher is None else file_digest(cfg.teacher)
        self.run_config = {**asdict(cfg), "teacher": teacher, "world_size": info.world_size,
                           "train_files": D.fingerprint(train_files), "val_files": D.fingerprint(val_files)}
        try:
            caches = dist.run_on_main(info, lambda: self._setup_main(train_files, val_files, short))
            dist.barrier(info)
            if caches is None:  # other ranks: rank 0 has built the caches
                caches = self._caches(train_files, val_files, short)
            train_cache, val_cache = caches
            repeats = D.repeat_counts(train_cache.paths, cfg.repeat) if cfg.repeat else None
            self.train_set = D.TrainSet(train_cache, cfg.image_size, cfg.seed, zoom=cfg.zoom, repeats=repeats)
            if repeats is not None:
                log.info("train: --repeat %s: %d of %d photos repeat, %d samples per epoch", " ".join(cfg.repeat),
                         int((repeats > 1).sum()), len(repeats), self.train_set.epoch_size)
            self.val_crops = D.center_crops(val_cache, cfg.image_size, cfg.val_limit) if val_cache else None
            return self._train()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)

    def _caches(self, train_files: list[D.ImageFile], val_files: list[D.ImageFile],
                short: int) -> tuple[D.ImageCache, D.ImageCache | None]:
        cfg = self.cfg
        train_cache = D.build_or_load_cache(train_files, short, self.cache_dir, workers=cfg.workers, label="train")
        val_cache = (D.build_or_load_cache(val_files, cfg.image_size, self.cache_dir, workers=cfg.workers, label="val",
                                           required=False) if val_files else None)
        if val_cache is not None and not len(val_cache):
            log.warning("warning: no validation photo is readable; training without validation metrics")
        return train_cache, val_cache

    def _setup_main(self, train_files: list[D.ImageFile], val_files: list[D.ImageFile],
                    short: int) -> tuple[D.ImageCache, D.ImageCache | None]:
        """Rank 0: check and lock the run folder, then build the caches (others reuse them)."""
        out, cfg = self.out, self.cfg
        rundir.check_writable(out)
        self._lock_fd = rundir.lock(out)
        has_ckpt = (out / "last.pt").is_file()
        if cfg.resume and not has_ckpt:
            raise ResumeError(f"--resume: {out / 'last.pt'} not found, nothing to resume")
        if not cfg.resume and has_ckpt:
            raise OutputError(f"--out {out} already holds a run (last.pt): pass --resume to continue it, or use a new --out")
        rundir.remove_stale_temps(out)
        if cfg.resume:  # before any decoding: a mismatch is reported at once
            self._ckpt = load_checkpoint(out / "last.pt")
            saved = {**RESUME_DEFAULTS, **(self._ckpt.get("train_config") or {})}
            diff = [f"{k} {saved.get(k)!r} in the checkpoint, {self.run_config[k]!r} now"
                    for k in RESUME_KEYS if saved.get(k) != self.run_config[k]]
            if diff:
                raise ResumeError(f"--resume: {out / 'last.pt'} was made with other settings: {'; '.join(diff)}")
        rundir.write_file_list(out / "train_files.txt", [f.path for f in train_files])
        rundir.write_file_list(out / "val_files.txt", [f.path for f in val_files])
        return self._caches(train_files, val_files, short)

    def _build(self) -> dict[str, Any] | None:
        cfg, info = self.cfg, self.info
        ckpt = None
        self.loss_fn = build_loss(cfg.loss, cfg.loss_options)
        if cfg.resume:  # rank 0 has checked the train config against it in _setup_main
            ckpt = self._ckpt if self._ckpt is not None else load_checkpoint(self.out / "last.pt")
            self._ckpt = None
            self.loss_fn.load_prepared_state(ckpt.get("loss_state") or {})
        else:
            self.loss_fn.prepare(self.train_set)
        head, head_options = self.loss_fn.head_config()
        self.model_config = ModelConfig(cfg.width, cfg.width_mult, head, head_options, encoder=cfg.encoder,
                                        members=cfg.members)
        if ckpt is not None:
            try:
                saved_model = ModelConfig.from_dict(ckpt["model_config"])
            except (ColorizerError, TypeError) as e:
                raise ResumeError(f"--resume: {self.out / 'last.pt'}: invalid model config ({e})") from e
            if saved_model != self.model_config:
                raise ResumeError(f"--resume: {self.out / 'last.pt'} holds model {saved_model.to_dict()}, "
                                  f"these settings build {self.model_config.to_dict()}")
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        self.net = ColorizerNet(self.model_config)
        if ckpt is None and self.model_config.pretrained:
            self.net.load_pretrained_encoder()
        self.net = self.net.to(info.device, memory_format=torch.channels_last)
        self.loss_fn.to(info.device)
        self.teacher = None
        if cfg.teacher is not None:
            self.teacher = Teacher(cfg.teacher, self.loss_fn.centres, self.loss_fn.stride, info.device)
            log.info("teacher: %s (%d member(s)), share %.2f of each pixel's target", Path(cfg.teacher).name,
                     self.teacher.members, self.loss_fn.teacher)
        encoder = list(self.net.encoder.parameters())
        levels = self.net.encoder.levels()
        frozen = encoder if cfg.encoder_lr_mult == 0 else [p for m in levels[:cfg.encoder_freeze] for p in m.parameters()]
        # Frozen weights: no gradients are computed for them at all (the backward pass stops where the first
        # learning level starts), which makes a step cheaper. BatchNorm statistics still follow the training photos.
        for p in frozen:
            p.requires_grad_(False)
        # --encoder-bn frozen: these layers run in eval mode (``_step``)
        self._frozen_bn = ([m for m in self.net.encoder.modules() if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm))]
                           if cfg.encoder_bn == "frozen" else [])
        if self._frozen_bn:
            log.info("encoder: BatchNorm statistics frozen (the pretrained ones, used in training as at inference)")
        if frozen:
            log.info("encoder: %s of %d feature levels frozen", "all" if len(frozen) == len(encoder) else
                     cfg.encoder_freeze, len(levels))
        ids = {id(p) for p in encoder}
        rest = [p for p in self.net.parameters() if id(p) not in ids]
        self.optimizer = torch.optim.Adam([{"params": encoder, "lr": cfg.lr * cfg.encoder_lr_mult},
                                           {"params": rest, "lr": cfg.lr}], lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps or 0))
        cuda = info.device.type == "cuda"
        self.amp = cfg.amp and cuda
        self.amp_dtype = torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        if cfg.amp and not cuda:
            log.info("note: --amp only applies on CUDA; training in float32 on %s", info.device)
        self.ema = WeightEMA(self.net, cfg.ema) if cfg.ema else None
        if ckpt is not None:
            if self.ema is not None:
                if not ckpt.get("ema"):
                    raise ResumeError(f"--resume: {self.out / 'last.pt'} holds no weight average for --ema")
                self.ema.load_state_dict(ckpt["ema"])
            self.net.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            rundir.set_rng_state(ckpt.get("rng") or {})
        fwd = _TrainForward(self.net)
        if info.enabled:
            ids = [info.device.index] if cuda else None
            fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=ids)
        self.fwd = fwd
        return ckpt

    # ------------------------------------------------------------------ loop

    def _train(self) -> TrainResult:
        cfg, info = self.cfg, self.info
        ckpt = self._build()
        self.step = int(ckpt["step"]) if ckpt else 0
        self.best = ckpt.get("best_psnr") if ckpt else None
        self.last_metrics: dict[str, Any] = dict(ckpt.get("metrics") or {}) if ckpt else {}
        self.saved_step = self.step if ckpt else -1
        resumed_from = self.step if ckpt else None
        if info.is_main:
            self._log_start(resumed_from)
            if ckpt:
                rundir.trim_metrics(self.out / "metrics.jsonl", self.step)
        end = min(cfg.steps, cfg.stop_at_step or cfg.steps)
        steps = range(self.step, end)
        batches = D.prefetch(lambda s: self.train_set.batch(s, cfg.batch_size, info.rank, info.world_size), steps,
                             depth=2 if cfg.workers > 0 else 0)
        bar = _progress_bar(cfg.steps, self.step) if info.is_main else None
        self.fwd.train()
        with contextlib.ExitStack() as stack:
            if bar is not None:
                from tqdm.contrib.logging import logging_redirect_tqdm

                stack.enter_context(logging_redirect_tqdm())
                stack.callback(bar.close)
            total_steps, total_time = self._loop(steps, batches, bar, end)
        if self.saved_step != self.step:
            self._validate_and_save(final=True)
        dist.broadcast_buffers(info, self.net)
        digest = dist.check_replicas_identical(info, self.net)
        rate = cfg.batch_size * info.world_size * total_steps / total_time if total_time else 0.0
        if info.is_main:
            log.info("done: step %d/%d, %.1f img/s mean, checkpoint %s", self.step, cfg.steps, rate,
                     self.out / "last.pt")
            if info.enabled:
                log.info("weights identical on %d ranks (sha256 %s)", info.world_size, digest)
            if self.step >= cfg.steps:
                rundir.mark_done(self.out, self.step, cfg.steps)
        return TrainResult(self.step, str(self.out / "last.pt"), self.best, self.last_metrics, digest, rate,
                           resumed_from)

    def _loop(self, steps: range, batches: Any, bar: Any, end: int) -> tuple[int, float]:
        cfg, info = self.cfg, self.info
        bad_run = self._bad_run
        win_loss, win_ok, win_steps, win_time, total_time = 0.0, 0, 0, 0.0, 0.0
        it = iter(batches)
        for s in steps:
            t0 = time.perf_counter()  # img/s counts waiting for data, not validation or checkpoints
            rgb = next(it)
            y, uv = D.to_model_tensors(rgb, info.device, channels_last=True)
            self.loss_fn.set_step(s)
            loss, ok, why = self._step(y, uv)
            self.step = s + 1
            dt = time.perf_counter() - t0
            win_time, win_steps, total_time = win_time + dt, win_steps + 1, total_time + dt
            if ok:
                bad_run.clear()
                win_loss, win_ok = win_loss + loss, win_ok + 1
            else:
                bad_run.append(self.step)
                log.warning("warning: step %d: %s, step skipped (%d in a row)", self.step, why, len(bad_run))
                if len(bad_run) > MAX_BAD_STEPS:
                    last = (f"last good checkpoint {self.out / 'last.pt'} (step {self.saved_step})"
                            if self.saved_step >= 0 else "no checkpoint was written")
                    raise TrainingDiverged(f"training diverged: non-finite loss or gradients for {len(bad_run)} "
                                           f"consecutive steps ({bad_run[0]}-{bad_run[-1]}); {last}")
            if bar is not None:
                bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == end:
                self.rate = cfg.batch_size * info.world_size * win_steps / max(win_time, 1e-9)
                eta = timedelta(seconds=round((cfg.steps - self.step) * win_time / win_steps))
                self.train_loss = win_loss / win_ok if win_ok else float("nan")
                msg = (f"step {self.step}/{cfg.steps}  loss {self.train_loss:.5f}  "
                       f"lr {self.scheduler.get_last_lr()[-1]:.2e}  {self.rate:.1f} img/s  eta {eta}")
                if bar is not None:
                    bar.set_postfix_str(f"loss {self.train_loss:.4f} {self.rate:.1f} img/s")
                    log.debug("%s", msg)
                else:
                    log.info("%s", msg)
                win_loss, win_ok, win_steps, win_time = 0.0, 0, 0, 0.0
            if self.step % cfg.val_every == 0 or self.step == end:
                self._validate_and_save()
        return len(steps), total_time

    def _step(self, y: torch.Tensor, uv: torch.Tensor) -> tuple[float, bool, str]:
        # With --encoder-bn frozen the encoder's BatchNorm layers normalise with their stored statistics and do not
        # update them; checked before every step, since ``train()`` (after validation) switches every module back.
        if self._frozen_bn and self._frozen_bn[0].training:
            for m in self._frozen_bn:
                m.eval()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.info.device.type, dtype=self.amp_dtype, enabled=self.amp):
            outputs = self.fwd(y)
            extra = {} if self.teacher is None else {"teacher_probs": self.teacher.probs(y)}
        # one loss per decoder member, averaged (every member learns the whole task from the shared features)
        loss = torch.stack([self.loss_fn({**{k: v.float() for k, v in out.items()}, **extra}, uv)
                            for out in outputs]).mean()
        self.scaler.scale(loss).backward()
        value = float(dist.all_reduce_mean(self.info, loss.detach().float()))
        ok, why = math.isfinite(value), f"loss is {value}"
        if ok and not self.scaler.is_enabled():  # with fp16 AMP the scaler skips inf gradients itself
            norm = float(nn.utils.clip_grad_norm_(self.net.parameters(), float("inf")))
            ok, why = math.isfinite(norm), f"gradient norm is {norm}"
        if ok:
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # fp16 AMP: the scaler skips a step with inf gradients and lowers its scale; the average skips it too
            if self.ema is not None and (scale is None or self.scaler.get_scale() >= scale):
                self.ema.update(self.net)
        self.scheduler.step()
        return value, ok, why

    # ------------------------------------------------------------------ validation and checkpoints

    def _validate_and_save(self, final: bool = False) -> None:
        info = self.info
        if self._bad_run and not final:  # same on every rank (the loss is all-reduced): keep the last good checkpoint
            log.warning("warning: step %d: no checkpoint inside a run of skipped steps", self.step)
            return
        if info.is_main:
            amp_dtype = self.amp_dtype if self.amp else None
            m = {"step": self.step, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "train_loss": getattr(self, "train_loss", None), "lr": self.scheduler.get_last_lr()[-1],
                 "img_per_s": getattr(self, "rate", None),
                 **validate(self.net, self.val_crops, info.device, amp_dtype=amp_dtype)}
            if self.ema is not None and "val_psnr" in m:
                avg = validate(self.ema.net, self.val_crops, info.device, amp_dtype=amp_dtype)
                m.update({f"ema_{k}": avg[k] for k in ("val_psnr", "val_colourfulness", "colourfulness_ratio")})
            self.last_metrics = m
            key = "ema_val_psnr" if self.ema is not None else "val_psnr"
            improved = key in m and (self.best is None or m[key] > self.best)
            if improved:
                self.best = m[key]
            if "val_psnr" in m:
                ema_text = (f"; average: psnr {m['ema_val_psnr']:.2f} dB, ratio {m['ema_colourfulness_ratio']:.2f}"
                            if self.ema is not None else "")
                log.info("val step %d: psnr %.2f dB (gray %.2f), colourfulness %.1f (gt %.1f, ratio %.2f)%s%s",
                         self.step, m["val_psnr"], m["gray_psnr"], m["val_colourfulness"], m["gt_colourfulness"],
                         m["colourfulness_ratio"], ema_text, "  best" if improved else "")
            rundir.append_metrics(self.out / "metrics.jsonl", m)
            payload = self._payload()
            save_checkpoint(self.out / "last.pt", payload)
            if improved:
                save_checkpoint(self.out / "best.pt", payload)
            log.info("checkpoint: step %d -> %s%s", self.step, self.out / "last.pt", " (+ best.pt)" if improved else "")
        self.saved_step = self.step
        dist.barrier(info)

    def _payload(self) -> dict[str, Any]:
        return {"model_config": self.model_config.to_dict(), "model": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "step": self.step, "rng": rundir.get_rng_state(), "train_config": self.run_config,
                "loss_state": self.loss_fn.prepared_state(), "best_psnr": self.best, "metrics": self.last_metrics,
                "ema": self.ema.state_dict() if self.ema is not None else None}

    def _log_start(self, resumed_from: int | None) -> None:
        cfg, info = self.cfg, self.info
        if resumed_from is not None:
            log.info("resuming from %s at step %d/%d", self.out / "last.pt", resumed_from, cfg.steps)
        n_val = 0 if self.val_crops is None else len(self.val_crops)
        log.info("train: %d images, val: %d images (%s), crops %d px; model %s x%g %s (%.2f M params), %s head, "
                 "encoder %s, %d decoder member(s), loss %s; batch %d x %d process(es); %d steps, lr %g, warm-up %d; device %s", len(self.train_set),
                 n_val, cfg.val or cfg.val_list or (f"every {round(1 / cfg.val_fraction)}th file" if cfg.val_fraction else "none"),
                 cfg.image_size, cfg.width, cfg.width_mult, list(self.model_config.widths),
                 count_parameters(self.net) / 1e6, self.model_config.head, cfg.encoder, cfg.members, cfg.loss, cfg.batch_size,
                 info.world_size, cfg.steps, cfg.lr, cfg.warmup_steps, info.device)


def _progress_bar(total: int, initial: int) -> Any:
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, file=sys.stderr, dynamic_ncols=True, unit="step")
