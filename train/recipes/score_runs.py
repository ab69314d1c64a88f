"""Score training runs on a validation list: centre crops, several annealed-mean temperatures.

    python cli.py score-runs --runs runs --only RUN_A,RUN_B --val RUN/val_files.txt \\
        --json runs/scores.json --grids runs/grids

Every run's final checkpoint (``last.pt``, the same step for all) is scored through the
engine's PyTorch backend (bit-for-bit the exported graph's maths) on the validation
photos centre-cropped to 256 x 256: PSNR, SSIM, colourfulness ratio, gray baseline.
Classification runs are scored at each ``--temperatures`` value (the annealed-mean T
is an inference setting, so one run gives all of them).

Choice rule, fixed before looking at the numbers: a (variant, T) passes the quality bar
when PSNR >= the gray baseline and colourfulness ratio >= 0.85; among those passing the
highest PSNR wins. If none passes, the highest PSNR among those with ratio >= 0.85; if
none has that either, the highest ratio among those at or above gray. Each variant's
grid (input | output | truth, first rows of the split) is drawn at its own best T by the
same rule.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from engine.api import Colorizer
from engine.evaluate import evaluate_folder
from engine.net.checkpoint import load_checkpoint, release_checkpoint
from train import rundir

RATIO_BAR = 0.85


def score_run(ckpt: Path, temperature: float | None, val: Path, size: int, grid: Path | None,
              weights: str = "auto") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "m.pt"
        release_checkpoint(ckpt, model, head_options={"temperature": temperature} if temperature else None,
                           weights=weights)
        with Colorizer(model, "torch", size=size) as c:
            rep = evaluate_folder(c.colorize, val, size=size, grid=grid, grid_rows=6)
    m, g = rep.model, rep.gray_baseline
    return {"temperature": temperature, "psnr": round(m["psnr"], 3), "ssim": round(m["ssim"], 4),
            "colourfulness_ratio": round(m["colourfulness_ratio"], 3), "gray_psnr": round(g["psnr"], 3),
            "gray_ssim": round(g["ssim"], 4), "images": rep.images}


def choose(rows: list[dict]) -> dict:
    passing = [r for r in rows if r["psnr"] >= r["gray_psnr"] and r["colourfulness_ratio"] >= RATIO_BAR]
    if passing:
        return max(passing, key=lambda r: r["psnr"])
    vivid = [r for r in rows if r["colourfulness_ratio"] >= RATIO_BAR]
    if vivid:
        return max(vivid, key=lambda r: r["psnr"])
    above = [r for r in rows if r["psnr"] >= r["gray_psnr"]]
    if above:
        return max(above, key=lambda r: r["colourfulness_ratio"])
    return max(rows, key=lambda r: r["psnr"])


def shrink_grid(png: Path, out: Path, scale: float = 0.5) -> None:
    img = Image.open(png).convert("RGB")
    img = img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, "JPEG", quality=85)


def score_runs(runs: Path, val: Path, *, only: set[str] | None = None, extra: Sequence[Path] = (),
               size: int = 256, temperatures: Sequence[float] = (0.2, 0.3, 0.4, 0.6, 0.8, 1.0),
               grids: Path | None = None, weights: str = "auto",
               on_rows: Callable[[str, list[dict]], None] | None = None) -> dict:
    """Score every finished run under ``runs`` (those with a ``DONE`` file; ``only``: by name) and the ``extra``
    checkpoints; ``on_rows(name, rows)`` after each. Returns the report: every row, each run's choice, the winner."""
    ckpts = sorted(d / "last.pt" for d in runs.iterdir()
                   if (d / rundir.DONE).is_file() and (only is None or d.name in only)) + list(extra)
    results = []
    for ckpt in ckpts:
        data = load_checkpoint(ckpt)
        head = data["model_config"]["head"]
        name = ckpt.parent.name
        grid_dir = Path(tempfile.mkdtemp()) if grids else None
        cases = list(temperatures) if head == "classification" else [None]
        rows = [score_run(ckpt, t, val, size, grid_dir / f"{k}.png" if grid_dir else None, weights)
                for k, t in enumerate(cases)]
        best = choose(rows)
        entry = {"variant": name, "checkpoint": str(ckpt), "weights": weights, "step": data.get("step"), "head": head,
                 "loss": (data.get("train_config") or {}).get("loss"),
                 "loss_options": (data.get("train_config") or {}).get("loss_options"), "scores": rows, "best": best}
        if grid_dir:  # every T drew its grid while scoring; keep the chosen one
            entry["grid"] = str(grids / f"{name}.jpg")
            shrink_grid(grid_dir / f"{rows.index(best)}.png", Path(entry["grid"]))
            shutil.rmtree(grid_dir)
        results.append(entry)
        if on_rows is not None:
            on_rows(name, rows)
    winner = choose([dict(r["best"], variant=r["variant"]) for r in results]) if results else None
    return {"size": size, "val": str(val), "ratio_bar": RATIO_BAR, "results": results, "winner": winner}
