"""Training data: list photos, split train/val, decode once into a uint8 cache, crop per step.

Listing: every file under the data folder (recursively, so the Places365 layout
``data_256/a/abbey/*.jpg`` works as well as a flat folder) whose suffix is one of
``IMAGE_SUFFIXES``, sorted by relative POSIX path.

Split (``split_files``): with ``--val-fraction F``, ``k = round(1 / F)`` and the
files at sorted positions ``k-1, 2k-1, ...`` (every k-th file, the first one
being the k-th) form the validation split; the rest train. With fewer than k
files but at least two, the last file is the validation split.

Cache (``build_or_load_cache``): each photo is decoded once (OpenCV, EXIF
orientation applied), resized so its short side is ``short_side`` and appended
to a raw uint8 file; a JSON index (shapes, offsets, skipped files) is written
last, so a cache whose index exists is complete. The key hashes the relative
paths, sizes and mtimes of the files plus ``short_side``: resumed runs, and runs
sharing ``--cache``, reuse it. Unreadable files are skipped with one warning each.

Sampling (``TrainSet.batch``): a pure function of ``(seed, step)``. The global
batch of step ``s`` is positions ``s*G .. s*G+G-1`` (``G`` = per-process batch x
world size) in an endless sequence of per-epoch permutations (epoch ``e`` uses
``default_rng([seed, e])``); rank ``r`` takes positions ``r*B .. r*B+B-1`` of it.
Each position's crop offset and flip come from ``default_rng([seed, 1, position])``.
So a resumed run sees exactly the batches an uninterrupted one would. With ``--repeat
GLOB=N`` (``repeat_counts``) a matching photo stands N times in every epoch's permutation
(each occurrence gets its own crop), and the pixels the loss's colour prior is built from
(``sample_pixels``) are drawn with the same weights.

Scale (``--zoom Z``): with Z = 1 the cache's short side is ``CROP_SCALE x crop`` and a
crop is ``crop x crop`` pixels of it, so every photo is seen at one scale (short
side 1.25 x crop). With Z > 1 the cache's short side is Z times that and each crop
takes a square of side ``s`` (log-uniform between ``crop`` and the short side, from
the same generator) and resizes it to ``crop x crop`` (area average): photos are
seen with short sides from ``crop`` (the whole short side in view) to
``Z x CROP_SCALE x crop``, the range of scales the engine meets at ``--size``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from engine.core import color
from engine.core.errors import ColorizerError
from engine.core.files import PHOTO_SUFFIXES

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = PHOTO_SUFFIXES
CACHE_VERSION = 1
CROP_SCALE = 1.25  # cached short side = round(CROP_SCALE * image_size * zoom)
MAX_REPEAT = 100  # --repeat GLOB=N: the largest N


def cache_short_side(crop: int, zoom: float = 1.0) -> int:
    """Short side of the training cache for crops of ``crop`` px at scale augmentation ``zoom``."""
    return round(CROP_SCALE * crop * zoom)


class DataError(ColorizerError):
    """The training or validation data cannot be used (missing folder, no readable image)."""


@dataclass(frozen=True)
class ImageFile:
    root: Path
    rel: str  # POSIX relative path, the sort and cache key

    @property
    def path(self) -> Path:
        return self.root / self.rel


def list_images(folder: str | os.PathLike[str]) -> list[ImageFile]:
    """All image files under ``folder`` (recursive), sorted by relative path."""
    root = Path(folder)
    if not root.exists():
        raise DataError(f"{root}: data folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: data path is not a folder")
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(IMAGE_SUFFIXES):
                rel = Path(dirpath, name).relative_to(root).as_posix()
                files.append(ImageFile(root, rel))
    if not files:
        raise DataError(f"{root}: no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) found")
    return sorted(files, key=lambda f: f.rel)


def split_files(files: list[ImageFile], val_fraction: float) -> tuple[list[ImageFile], list[ImageFile]]:
    """Deterministic split: every k-th file (``k = round(1 / val_fraction)``) validates; see module doc."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction: expected a value in [0, 1), found {val_fraction}")
    if val_fraction == 0.0:
        return list(files), []
    k = max(2, round(1.0 / val_fraction))
    val_idx = set(range(k - 1, len(files), k))
    if not val_idx and len(files) >= 2:
        val_idx = {len(files) - 1}
    train = [f for i, f in enumerate(files) if i not in val_idx]
    val = [f for i, f in enumerate(files) if i in val_idx]
    return train, val


def split_by_list(files: list[ImageFile], list_path: str | os.PathLike[str]) -> tuple[list[ImageFile], list[ImageFile]]:
    """Validation = the files named in ``list_path`` (one path per line, relative to the data folder; ``#`` comments);
    training = the rest. A listed name that is not among ``files`` is an error: a fixed split must not shrink silently."""
    path = Path(list_path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the validation list ({type(e).__name__}: {e})") from e
    names = {ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}
    if not names:
        raise DataError(f"{path}: the validation list names no file")
    known = {f.rel for f in files}
    missing = sorted(names - known)
    if missing:
        raise DataError(f"{path}: {len(missing)} listed file(s) not found under the data folder, e.g. {missing[0]!r}")
    return [f for f in files if f.rel not in names], [f for f in files if f.rel in names]


def exclude_files(files: list[ImageFile], patterns: tuple[str, ...]) -> list[ImageFile]:
    """``files`` minus those whose relative path matches one of the glob ``patterns``."""
    import fnmatch

    kept = [f for f in files if not any(fnmatch.fnmatchcase(f.rel, p) for p in patterns)]
    if patterns and not kept:
        raise DataError(f"--exclude {' '.join(patterns)}: leaves no training photo")
    return kept


def fingerprint(files: list[ImageFile]) -> str:
    """Hash of the relative paths: identifies a file list across machines and resumes."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.rel.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def parse_repeat(specs: tuple[str, ...] | list[str]) -> tuple[tuple[str, int], ...]:
    """``("GLOB=N", ...)`` -> ``((GLOB, N), ...)``; N an integer from 1 to ``MAX_REPEAT``."""
    out = []
    for spec in specs:
        glob, sep, count = str(spec).rpartition("=")
        try:
            n = int(count)
        except ValueError:
            n = 0
        if not sep or not glob or not 1 <= n <= MAX_REPEAT:
            raise DataError(f"--repeat: expected GLOB=N with N an integer from 1 to {MAX_REPEAT}, found {spec!r}")
        out.append((glob, n))
    return tuple(out)


def repeat_counts(paths: list[str], specs: tuple[str, ...] | list[str]) -> np.ndarray:
    """How often each relative path stands in an epoch: the largest N of the ``GLOB=N`` specs it matches, else 1.

    A spec that matches none of ``paths`` is a ``DataError`` (a mistyped glob must not pass silently).
    """
    import fnmatch

    counts = np.ones(len(paths), dtype=np.int64)
    for glob, n in parse_repeat(specs):
        hit = np.array([fnmatch.fnmatchcase(p, glob) for p in paths], dtype=bool)
        if not hit.any():
            raise DataError(f"--repeat {glob}={n}: matches no training photo")
        counts[hit] = np.maximum(counts[hit], n)
    return counts


# ----------------------------------------------------------------------------- decoding


def decode_resized(path: Path, short_side: int) -> np.ndarray:
    """Decode ``path`` as RGB uint8 with its short side resized to ``short_side``.

    Raises ``ValueError`` or ``OSError`` with the reason when the file cannot be used.
    """
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ValueError("empty file")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable image")
    h, w = bgr.shape[:2]
    scale = short_side / min(h, w)
    nh, nw = max(short_side, round(h * scale)), max(short_side, round(w * scale))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        bgr = cv2.resize(bgr, (nw, nh), interpolation=interp)
    return np.ascontiguousarray(bgr[..., ::-1])


def _decode_or_reason(item: tuple[ImageFile, int]) -> np.ndarray | str:
    f, short_side = item
    try:
        return decode_resized(f.path, short_side)
    except (ValueError, OSError) as e:
        return str(e) or type(e).__name__
    except Exception as e:  # noqa: BLE001 - cv2.error and codec errors: skip the file, name the reason
        return f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"


# ----------------------------------------------------------------------------- cache


class ImageCache:
    """Read-only view of a built cache: ``image(i)`` is an ``(h, w, 3)`` uint8 array."""

    def __init__(self, index_path: Path) -> None:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        self.short_side: int = index["short_side"]
        self.paths: list[str] = [e["path"] for e in index["images"]]
        self.shapes = np.array([e["shape"] for e in index["images"]], dtype=np.int64).reshape(-1, 2)
        self.offsets = np.array([e["offset"] for e in index["images"]], dtype=np.int64)
        self.skipped: list[tuple[str, str]] = [(s["path"], s["reason"]) for s in index["skipped"]]
        size = int(index["bytes"])
        pixels = index_path.with_suffix(".u8")
        self.pixels = np.memmap(pixels, dtype=np.uint8, mode="r", shape=(size,)) if size else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> np.ndarray:
        h, w = (int(v) for v in self.shapes[i])
        start = int(self.offsets[i])
        return self.pixels[start : start + h * w * 3].reshape(h, w, 3)


def cache_key(files: list[ImageFile], short_side: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:{short_side}".encode())
    for f in files:
        try:
            st = f.path.stat()
            h.update(f"{f.rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        except OSError:
            h.update(f"{f.rel}\0missing\0".encode())
    return h.hexdigest()[:20]


def build_or_load_cache(files: list[ImageFile], short_side: int, cache_dir: Path, *, workers: int = 2,
                        label: str = "train", required: bool = True) -> ImageCache:
    """Decode ``files`` once into ``cache_dir`` (or reuse a complete cache); see module doc.

    Raises ``DataError`` when no file is readable, unless ``required`` is false.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(files, short_side)
    index_path = cache_dir / f"{label}-{key}.json"
    if index_path.is_file():
        cache = ImageCache(index_path)
        log.info("%s: reusing cache %s (%d images, short side %d)", label, index_path.name, len(cache), short_side)
    else:
        log.info("%s: decoding %d images to short side %d into %s", label, len(files), short_side, cache_dir)
        _build(files, short_side, index_path, workers, label)
        cache = ImageCache(index_path)
    for path, reason in cache.skipped:
        log.warning("warning: skipping unreadable image %s: %s", path, reason)
    if len(cache) == 0 and required:
        raise DataError(f"{label}: none of the {len(files)} image(s) could be read (first: {cache.skipped[0][0]})")
    return cache


def _build(files: list[ImageFile], short_side: int, index_path: Path, workers: int, label: str) -> None:
    pixels = index_path.with_suffix(".u8")
    tmp_pixels = pixels.with_name(f".{pixels.name}.tmp-{os.getpid()}")
    tmp_index = index_path.with_name(f".{index_path.name}.tmp-{os.getpid()}")
    images: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    offset = 0
    try:
        with open(tmp_pixels, "wb") as out, ThreadPoolExecutor(max(1, workers)) as pool:
            for start in range(0, len(files), 256):
                chunk = files[start : start + 256]
                for f, res in zip(chunk, pool.map(_decode_or_reason, [(f, short_side) for f in chunk])):
                    if isinstance(res, str):
                        skipped.append({"path": str(f.path), "reason": res})
                        continue
                    out.write(res.tobytes())
                    images.append({"path": f.rel, "shape": list(res.shape[:2]), "offset": offset})
                    offset += res.size
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_pixels, pixels)
        index = {"version": CACHE_VERSION, "short_side": short_side, "bytes": offset, "images": images,
                 "skipped": skipped}
        tmp_index.write_text(json.dumps(index), encoding="utf-8")
        os.replace(tmp_index, index_path)
    except OSError as e:
        raise DataError(f"{label}: cannot write the image cache in {index_path.parent} ({e})") from e
    finally:
        for t in (tmp_pixels, tmp_index):
            if t.exists():
                t.unlink()
    log.info("%s: cached %d images (%.1f MB), skipped %d", label, len(images), offset / 1e6, len(skipped))


# ----------------------------------------------------------------------------- sampling


class TrainSet:
    """Random ``crop x crop`` crops with horizontal flips, a pure function of ``(seed, step)``.

    This is what ``Loss.prepare`` receives: ``len()``, ``image(i)`` (uint8 RGB
    ``(h, w, 3)``, short side ``cache.short_side``) and ``sample_pixels``.
    """

    def __init__(self, cache: ImageCache, crop: int, seed: int, *, zoom: float = 1.0,
                 repeats: np.ndarray | None = None) -> None:
        if cache.shapes.size and cache.shapes.min() < crop:
            raise DataError(f"cache short side {cache.shapes.min()} is smaller than the crop {crop}")
        self.cache = cache
        self.crop = crop
        self.seed = seed
        self.zoom = zoom
        # an epoch: every image, image i ``repeats[i]`` times (``repeat_counts``); None = once each
        if repeats is not None and (len(repeats) != len(cache) or np.min(repeats, initial=1) < 1):
            raise DataError(f"repeats: expected {len(cache)} counts >= 1, found {len(repeats)}")
        self.repeats = None if repeats is None or np.all(repeats == 1) else np.asarray(repeats, np.int64)
        self._pool = np.arange(len(cache)) if self.repeats is None else np.repeat(np.arange(len(cache)), self.repeats)
        self._perm_epoch = -1
        self._perm = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.cache)

    @property
    def epoch_size(self) -> int:
        """Samples per epoch: the number of images, counting repeats."""
        return len(self._pool)

    def image(self, i: int) -> np.ndarray:
        return self.cache.image(i)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = self._pool[np.random.default_rng([self.seed, epoch]).permutation(len(self._pool))]
            self._perm_epoch = epoch
        return self._perm

    def positions(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """Global sample positions this rank uses at ``step``."""
        start = step * batch_size * world_size + rank * batch_size
        return np.arange(start, start + batch_size, dtype=np.int64)

    def indices(self, positions: np.ndarray) -> np.ndarray:
        n = self.epoch_size
        return np.array([self._permutation(int(p) // n)[int(p) % n] for p in positions], dtype=np.int64)

    def batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """uint8 RGB crops ``(B, crop, crop, 3)`` for ``step`` on this rank."""
        pos = self.positions(step, batch_size, rank, world_size)
        out = np.empty((len(pos), self.crop, self.crop, 3), dtype=np.uint8)
        for j, (p, i) in enumerate(zip(pos, self.indices(pos))):
            img = self.image(int(i))
            h, w = img.shape[:2]
            r = np.random.default_rng([self.seed, 1, int(p)])
            side = self.crop
            if self.zoom > 1:  # log-uniform side between the crop and the short side (module docstring)
                side = int(round(np.exp(r.uniform(np.log(self.crop), np.log(min(h, w))))))
            top, left = int(r.integers(0, h - side + 1)), int(r.integers(0, w - side + 1))
            crop = img[top : top + side, left : left + side]
            if side != self.crop:
                import cv2

                crop = cv2.resize(crop, (self.crop, self.crop), interpolation=cv2.INTER_AREA)
            out[j] = crop[:, ::-1] if r.random() < 0.5 else crop
        return out

    def sample_pixels(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` RGB pixels ``(n, 3)`` uint8 drawn over images (uniformly, or weighted by the repeats), then
        positions (for priors)."""
        r = np.random.default_rng([seed, 2])
        out = np.empty((n, 3), dtype=np.uint8)
        if self.repeats is None:
            which = r.integers(0, len(self), n)
        else:
            which = r.choice(len(self), size=n, p=self.repeats / self.repeats.sum())
        for i in np.unique(which):
            sel = np.flatnonzero(which == i)
            img = self.image(int(i)).reshape(-1, 3)
            out[sel] = img[r.integers(0, len(img), len(sel))]
        return out


def center_crops(cache: ImageCache, size: int, limit: int | None = None) -> np.ndarray:
    """Fixed centre ``size x size`` crops of the first ``limit`` cached images, ``(N, size, size, 3)``."""
    n = len(cache) if limit is None else min(limit, len(cache))
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        img = cache.image(i)
        h, w = img.shape[:2]
        top, left = (h - size) // 2, (w - size) // 2
        out[i] = img[top : top + size, left : left + size]
    return out


def to_model_tensors(rgb_u8: np.ndarray, device: Any = "cpu", channels_last: bool = False) -> tuple[Any, Any]:
    """uint8 RGB ``(B, H, W, 3)`` -> model input Y ``(B, 1, H, W)`` and target UV ``(B, 2, H, W)``.

    Y is quantised to uint8 first (``engine.core.color`` luma), exactly as the engine feeds
    a gray photo; UV is the float chroma of the colour photo.
    """
    import torch

    t = torch.from_numpy(np.ascontiguousarray(rgb_u8)).to(device, non_blocking=True).permute(0, 3, 1, 2)
    yuv = color.rgb_u8_to_yuv_torch(t)
    y = color.gray_u8_to_y_torch(color.to_u8_torch(yuv[:, :1]))
    uv = yuv[:, 1:].contiguous()
    if channels_last:
        y, uv = y.contiguous(memory_format=torch.channels_last), uv.contiguous(memory_format=torch.channels_last)
    return y, uv


def prefetch(make: Any, steps: range, depth: int = 2) -> Iterator[Any]:
    """Yield ``make(step)`` for ``steps`` in order, computed ``depth`` ahead in one background thread."""
    if depth <= 0:
        for s in steps:
            yield make(s)
        return
    with ThreadPoolExecutor(1) as pool:
        pending = [pool.submit(make, s) for s in steps[:depth]]
        for k in range(len(steps)):
            if k + depth < len(steps):
                pending.append(pool.submit(make, steps[k + depth]))
            yield pending.pop(0).result()
