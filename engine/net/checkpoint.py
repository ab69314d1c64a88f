"""Checkpoints: atomic writes, clear errors on load.

A checkpoint is a ``torch.save`` dict::

    {"format": "colorizer-checkpoint/1", "model_config": {...}, "model": state_dict,
     "optimizer": state_dict | None, "step": int, "rng": {...} | None,
     "train_config": {...}, "metrics": {...}, "ema": {"decay", "updates", "model"} | None}

(``ema``: the weight average of ``cli.py train --ema``, ``train.ema``.)

Everything in it is a tensor or a plain type (int, float, str, bool, None, list, tuple,
dict): ``load_checkpoint`` reads with the safe unpickler (``weights_only=True``) and
refuses a file that needs anything else, since unpickling arbitrary objects runs code.

``save_checkpoint`` writes to a temp file beside the target, fsyncs and renames,
so a kill at any moment leaves either the old or the new file, never a broken one.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from engine.core.errors import ColorizerError
from engine.core.files import atomic_write
from engine.net.model import ColorizerNet, ModelConfig, ModelConfigError

CHECKPOINT_FORMAT = "colorizer-checkpoint/1"


class CheckpointError(ColorizerError):
    """A checkpoint is missing, unreadable, or from an incompatible model."""


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    data = {"format": CHECKPOINT_FORMAT, **payload}
    with atomic_write(path, sync_dir=True) as f:
        torch.save(data, f)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint dict on the CPU. Raises ``CheckpointError`` with the path and reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        # weights_only: the unpickler builds tensors and plain containers only and refuses any other
        # class or function, so a crafted file cannot run code while it is read.
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # no class or function asked for: a corrupt or foreign file
            raise CheckpointError(f"{path}: not a readable checkpoint ({_unpickler_reason(e)})") from e
        raise CheckpointError(f"{path}: refused: the checkpoint holds {_refused_global(e)}, not only tensors and "
                              "plain types (int, float, str, list, dict); loading it could run code") from e
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for corrupt files
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first})") from e
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: expected checkpoint format {CHECKPOINT_FORMAT!r}, found {found!r}")
    for key in ("model_config", "model"):
        if key not in data:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    return data


def _unpickler_reason(e: Exception) -> str:
    """The unpickler's own reason (e.g. "Unsupported operand 168"), without torch's advice around it."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if "WeightsUnpickler error" in ln and i + 1 < len(lines):
            return f"UnpicklingError: {lines[i + 1]}"
    return f"UnpicklingError: {lines[0] if lines else ''}"


def _refused_global(e: Exception) -> str:
    """The class or function the safe unpickler refused, from its message, for a one-line error."""
    m = re.search(r"GLOBAL ([\w.]+)", str(e))
    return f"a reference to {m.group(1)}" if m else "an object the safe loader refuses"


def load_model(path: str | os.PathLike[str], *, expect: ModelConfig | None = None) -> tuple[ColorizerNet, dict[str, Any]]:
    """Rebuild the network from a checkpoint, in eval mode on the CPU.

    ``expect``: when given, a checkpoint whose model config differs is refused.
    Returns ``(model, checkpoint_dict)``.
    """
    data = load_checkpoint(path)
    try:
        config = ModelConfig.from_dict(data["model_config"])
        model = ColorizerNet(config)
    except (ModelConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid model config ({e})") from e
    if expect is not None and expect != config:
        raise CheckpointError(f"{path}: model config mismatch: expected {expect.to_dict()}, found {config.to_dict()}")
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the model config ({first})") from e
    model.eval()
    return model, data


# train_config keys that hold paths, and what a released checkpoint says instead of a path outside the repository
_PATH_PLACEHOLDERS = {"data": "DATA", "val": "VAL", "val_list": "VAL_LIST", "cache": "CACHE"}


def _portable(value: Any, placeholder: str) -> Any:
    """``value`` when it is a path inside the working directory's tree (relative, no ``..``), else ``placeholder``."""
    if not isinstance(value, str):
        return value
    path = Path(value)
    return value if not path.is_absolute() and ".." not in path.parts else placeholder


def portable_train_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the machine's own paths replaced: data -> ``DATA``, out -> the run folder's name, ...

    Relative paths inside the project (``train/splits/val.txt``) are kept, so a released model still says
    which validation list it was tuned on, without naming folders of the machine that trained it.
    """
    out = dict(config)
    for key, placeholder in _PATH_PLACEHOLDERS.items():
        if out.get(key) is not None:
            out[key] = _portable(out[key], placeholder)
    if isinstance(out.get("out"), str):
        out["out"] = Path(out["out"]).name
    return out


def _release_weights(path: Path, data: dict[str, Any], weights: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state to ship (live weights or their average) and how to describe it."""
    ema = data.get("ema")
    if weights == "ema" and not ema:
        raise CheckpointError(f"{path}: checkpoint has no weight average (train with --ema)")
    if ema and weights != "model":
        return ema["model"], f"ema (decay {ema['decay']}, {ema['updates']} updates)"
    released = data.get("release")
    return data["model"], released["weights"] if isinstance(released, dict) and "weights" in released else "model"


def release_checkpoint(src: str | os.PathLike[str] | list[str | os.PathLike[str]], dst: str | os.PathLike[str], *,
                       head_options: dict[str, Any] | None = None, weights: str = "auto", overwrite: bool = False,
                       **metadata: Any) -> dict[str, Any]:
    """Write a small inference-only copy of ``src``: model config, weights, step, metrics, ``metadata``.

    Drops optimizer, scheduler and RNG state (two thirds of a training checkpoint's size);
    the result still loads with ``load_model`` and exports with ``cli.py export``.
    ``head_options`` overrides inference-time head settings (e.g. the annealed-mean
    ``temperature`` chosen on the validation split), so the PyTorch backend decodes
    exactly like the exported graph. ``weights``: ``"model"`` (the live weights),
    ``"ema"`` (the moving average of ``cli.py train --ema``) or ``"auto"`` (the
    average when the checkpoint has one). The training config is kept without the
    machine's paths (``portable_train_config``); the source is named by its run folder
    and file name. Several sources (a list of two or more) are merged into one model whose
    decoder members are all of theirs (``engine.net.merge``; the first source's training config
    is kept, per-run metrics are not). An existing ``dst`` is an error unless ``overwrite``.
    Returns what was written.
    """
    srcs = [Path(p) for p in src] if isinstance(src, (list, tuple)) else [Path(src)]
    dst = Path(dst)
    if dst.is_dir():
        raise CheckpointError(f"{dst}: expected a file path for the release, found a folder")
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst}: already exists; pass --force to overwrite")
    if any(dst.resolve() == p.resolve() for p in srcs):
        raise CheckpointError(f"{dst}: is the checkpoint being released; write the release to another file")
    if weights not in ("auto", "model", "ema"):
        raise CheckpointError(f"weights: expected 'auto', 'model' or 'ema', found {weights!r}")
    datas = [load_checkpoint(p) for p in srcs]
    chosen = [_release_weights(p, d, weights) for p, d in zip(srcs, datas)]
    names = [f"{p.resolve().parent.name}/{p.name}" for p in srcs]
    data = datas[0]
    keep = {k: data[k] for k in ("model_config", "model", "step", "metrics", "train_config") if k in data}
    keep["model"] = chosen[0][0]
    if len(srcs) == 1:
        metadata = dict(metadata, weights=chosen[0][1])
    else:
        from engine.net.merge import MergeError, merge_members

        try:
            sources = [(str(p), ModelConfig.from_dict(d["model_config"]), w)
                       for p, d, (w, _) in zip(srcs, datas, chosen)]
            config, keep["model"] = merge_members(sources)
        except (MergeError, ModelConfigError, TypeError) as e:
            raise CheckpointError(str(e)) from e
        keep["model_config"] = config.to_dict()
        keep.pop("metrics", None)
        steps = [d.get("step") for d in datas]
        keep["step"] = min(steps) if all(isinstance(n, int) for n in steps) else None  # each: release["members"]
        metadata = dict(metadata, weights=", ".join(sorted({w for _, w in chosen})),
                        members=[{"source": n, "step": d.get("step"), "weights": w}
                                 for n, d, (_, w) in zip(names, datas, chosen)])
    if head_options:
        head = keep["model_config"].get("head")
        if head != "classification":
            raise CheckpointError(f"{srcs[0]}: head options {sorted(head_options)} need a classification head, "
                                  f"found a {head} head")
        config = dict(keep["model_config"])
        config["head_options"] = {**config.get("head_options", {}), **head_options}
        keep["model_config"] = config
    if isinstance(keep.get("train_config"), dict):
        keep["train_config"] = portable_train_config(keep["train_config"])
    keep["model"] = {k: v.detach().clone() for k, v in keep["model"].items()}
    keep["release"] = dict(metadata, source=" + ".join(names))
    save_checkpoint(dst, keep)
    return keep
