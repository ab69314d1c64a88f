import shutil

import numpy as np
from PIL import Image

from engine.api import Colorizer
from engine.demo import demo_rows, run_demo
from tests.conftest import SAMPLES


def test_demo_colorizes_one_sample_and_writes_a_grid(tiny_onnx, tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    colour = next(p for p in sorted(SAMPLES.iterdir()) if p.name.startswith("color-"))
    shutil.copy(colour, samples / colour.name)
    out = tmp_path / "out"
    with Colorizer(tiny_onnx, "ort", size=64) as c:
        summary, grid = run_demo(c.colorize_dir, samples=samples, out=out)
    assert summary.exit_code == 0
    result = Image.open(out / colour.name)
    assert result.mode == "RGB" and result.size == Image.open(colour).size
    rows = demo_rows(samples, out, height=50)
    assert len(rows) == 1
    # a colour original gets three panels: luma input, output, original (+ 4 px spacing below)
    w, h = Image.open(colour).size
    assert rows[0].shape == (54, 3 * round(w * 50 / h), 3)
    assert np.array_equal(np.asarray(Image.open(grid)), demo_rows(samples, out)[0])
