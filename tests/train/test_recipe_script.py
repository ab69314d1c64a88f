"""train/recipes/train.sh: the options each recipe passes to `cli.py train`, EXTRA after them, --resume when a run exists."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "train" / "recipes" / "train.sh"


def _args(tmp_path, recipe, run="run", **env):
    fake = tmp_path / "python"  # stands in for the interpreter: writes the arguments it got, one per line
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    fake.chmod(0o755)
    out = tmp_path / "args.txt"
    r = subprocess.run(["bash", str(SCRIPT), "DATA", str(tmp_path / run), recipe], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYTHON": str(fake), "ARGS_OUT": str(out), **env})
    assert r.returncode == 0, r.stderr
    return out.read_text().splitlines()


def _value(args, option):
    return args[len(args) - 1 - args[::-1].index(option) + 1]  # the last occurrence wins, as in click


def test_lite0_is_the_bundled_recipe(tmp_path):
    args = _args(tmp_path, "lite0")
    assert args[:2] == ["cli.py", "train"] and _value(args, "--data") == "DATA"
    assert _value(args, "--encoder") == "efficientnet-lite0" and _value(args, "--encoder-lr-mult") == "0"
    assert _value(args, "--image-size") == "160" and _value(args, "--steps") == "3000"
    assert "lam=0.62" in args and "--resume" not in args and "--exclude" not in args


def test_vgg_recipe_and_overrides(tmp_path):
    args = _args(tmp_path, "vgg", STEPS="1000", EXCLUDE="imagenet_*", EXTRA="--image-size 224 --loss-option lam=0.7")
    assert _value(args, "--encoder") == "vgg" and _value(args, "--width-mult") == "0.5"
    assert _value(args, "--steps") == "1000" and _value(args, "--exclude") == "imagenet_*"
    assert _value(args, "--image-size") == "224" and args.index("lam=0.8") < args.index("lam=0.7")


def test_an_existing_run_is_resumed(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"")
    assert _args(tmp_path, "lite0")[-1] == "--resume"


def test_an_unknown_recipe_is_refused(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "DATA", str(tmp_path / "run"), "lite9"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "expected lite0 or vgg, found lite9" in r.stderr


@pytest.mark.parametrize("recipe", ["lite0", "vgg"])
def test_the_log_goes_beside_the_run(tmp_path, recipe):
    _args(tmp_path, recipe)
    assert (tmp_path / "run.log").exists()


def test_repeat_specs_pass_one_by_one_unexpanded(tmp_path):
    # "cli.p*" would become cli.py (in the folder the script runs in) if the shell expanded it
    args = _args(tmp_path, "lite0", REPEAT="bsds_*=2  cli.p*")
    i = [k for k, a in enumerate(args) if a == "--repeat"]
    assert [args[k + 1] for k in i] == ["bsds_*=2", "cli.p*"]
    assert "--repeat" not in _args(tmp_path, "lite0")
