"""engine.tree: listing, output names, shards, folder checks, stale temp files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from engine import tree
from engine.core.files import temp_name
from engine.tree import Shard, UsageError


def touch(p: Path, data: bytes = b"x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


@pytest.fixture()
def src(tmp_path):
    root = tmp_path / "in"
    for rel in ["b.jpg", "a.PNG", "c.webp", "d.bmp", "e.tif", "f.tiff", "g.jpeg", "notes.txt", "raw.cr2",
                "sub/x.jpg", "sub/deeper/y.png", "sub/z.pgm", "sub/z.png", ".hidden.jpg", "._mac.jpg",
                ".git/h.jpg", "sub/.x.jpg.tmp-123"]:
        touch(root / rel)
    return root


def rels(tasks):
    return [t.rel for t in tasks]


def test_walk_lists_images_sorted_and_skips_hidden(src):
    got = rels(tree.walk(src))
    assert got == ["a.PNG", "b.jpg", "c.webp", "d.bmp", "e.tif", "f.tiff", "g.jpeg",
                   "sub/x.jpg", "sub/z.pgm", "sub/z.png", "sub/deeper/y.png"]
    assert tree.count(src) == len(got)


def test_output_names_and_formats(src, tmp_path):
    tasks = {t.rel: t for t in tree.walk(src, tmp_path / "out")}
    assert tasks["b.jpg"].dst == tmp_path / "out" / "b.jpg" and tasks["b.jpg"].fmt == "JPEG"
    assert tasks["a.PNG"].fmt == "PNG" and tasks["a.PNG"].dst.name == "a.PNG"
    assert tasks["e.tif"].fmt == "TIFF" and tasks["c.webp"].fmt == "WEBP" and tasks["d.bmp"].fmt == "BMP"
    # z.pgm cannot hold colour -> PNG, and z.png exists beside it -> z.pgm.png
    assert tasks["sub/z.pgm"].dst == tmp_path / "out" / "sub" / "z.pgm.png" and tasks["sub/z.pgm"].fmt == "PNG"
    assert tasks["sub/deeper/y.png"].dst == tmp_path / "out" / "sub" / "deeper" / "y.png"
    assert len({t.dst for t in tasks.values()}) == len(tasks)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shards_partition_every_file_exactly_once(src, n):
    everything = rels(tree.walk(src))
    parts = [rels(tree.walk(src, shard=Shard(i, n))) for i in range(n)]
    flat = [r for p in parts for r in p]
    assert sorted(flat) == sorted(everything) and len(flat) == len(set(flat))
    assert parts == [rels(tree.walk(src, shard=Shard(i, n))) for i in range(n)]  # stable


def test_shard_is_stable_when_files_are_added(src):
    before = {r: tree.shard_of(r, 4) for r in rels(tree.walk(src))}
    touch(src / "new" / "n.jpg")
    after = {r: tree.shard_of(r, 4) for r in rels(tree.walk(src))}
    assert all(after[r] == s for r, s in before.items())


@pytest.mark.parametrize("text", ["1/1", "4/4", "-1/3", "a/b", "3", "0/0"])
def test_bad_shard_text(text):
    with pytest.raises(UsageError, match="--shard"):
        Shard.parse(text)


def test_shard_parse():
    assert Shard.parse(" 2/5 ") == Shard(2, 5) and str(Shard(2, 5)) == "2/5"


def test_folders_must_not_overlap(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    with pytest.raises(UsageError, match="inside the input folder"):
        tree.check_folders(src, src)
    with pytest.raises(UsageError, match="inside the input folder"):
        tree.check_folders(src, src / "out")
    with pytest.raises(UsageError, match="inside the output folder"):
        tree.check_folders(src, tmp_path)
    with pytest.raises(UsageError, match="expected a directory, found missing"):
        tree.check_folders(tmp_path / "nope", tmp_path / "out")
    link = tmp_path / "link"
    link.symlink_to(src)
    with pytest.raises(UsageError, match="inside the input folder"):
        tree.check_folders(src, link / "out")
    assert tree.check_folders(src, tmp_path / "out") == (src, tmp_path / "out")


def test_existing_outputs_are_skipped_unless_overwrite(src, tmp_path):
    out = tmp_path / "out"
    touch(out / "b.jpg")
    touch(out / "sub" / "z.pgm.png")
    skipped = {t.rel for t in tree.walk(src, out) if t.skip}
    assert skipped == {"b.jpg", "sub/z.pgm"}
    assert not any(t.skip for t in tree.walk(src, out, overwrite=True))


def test_stale_temps_of_this_run_are_removed(src, tmp_path):
    out = tmp_path / "out"
    stale = touch(out / "sub" / temp_name("x.jpg", 999999))
    foreign = touch(out / "sub" / temp_name("not-ours.jpg", 999999))
    mine = touch(out / temp_name("b.jpg", os.getpid()))
    list(tree.walk(src, out))
    assert not stale.exists()
    assert foreign.exists()  # no input maps to it: left alone
    assert mine.exists()  # this process's own temp file is never touched


def test_temps_of_other_shards_are_left_alone(src, tmp_path):
    out = tmp_path / "out"
    owner = tree.shard_of("sub/x.jpg", 2)
    stale = touch(out / "sub" / temp_name("x.jpg", 999999))
    list(tree.walk(src, out, shard=Shard(1 - owner, 2)))
    assert stale.exists()
    list(tree.walk(src, out, shard=Shard(owner, 2)))
    assert not stale.exists()


def test_temp_names():
    assert tree.parse_temp_name(temp_name("a.b.jpg", 42)) == ("a.b.jpg", 42)
    assert tree.parse_temp_name("a.jpg") is None and tree.parse_temp_name(".a.jpg.tmp-x") is None


def test_clashing_output_names_fail_naming_the_owner_and_a_rerun_agrees(tmp_path):
    """photo.gif would become photo.png or photo.gif.png: both are inputs' own names, so it fails, once."""
    src = tmp_path / "in"
    for name in ["photo.gif", "photo.png", "photo.gif.png", "solo.gif", "pic.pgm", "pic.pgm.png"]:
        touch(src / name)
    first = [(t.rel, t.dst.name if t.error is None else None, t.error) for t in tree.walk(src, tmp_path / "out")]
    by_rel = {rel: (out, err) for rel, out, err in first}
    assert by_rel["photo.png"] == ("photo.png", None)
    assert by_rel["photo.gif.png"] == ("photo.gif.png", None)
    out, err = by_rel["photo.gif"]
    assert out is None and "output name clash" in err and "photo.png" in err and "photo.gif.png" in err
    assert by_rel["solo.gif"] == ("solo.png", None)
    assert by_rel["pic.pgm"] == ("pic.png", None)  # pic.pgm.png is an input, pic.png is free
    outs = [o for o, e in by_rel.values() if e is None]
    assert len(outs) == len(set(outs))  # every output name is written by one input only
    for rel, out, err in first:  # outputs of the first run present: the rerun plans the same names
        if err is None:
            touch(tmp_path / "out" / out)
    again = [(t.rel, t.dst.name if t.error is None else None, t.error, t.skip) for t in tree.walk(src, tmp_path / "out")]
    assert [a[:3] for a in again] == first
    assert [a[0] for a in again if not a[3]] == ["photo.gif"]  # only the clash is not skipped: it fails again


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "tiff"])
def test_plan_folder_names_are_unique_for_every_format(fmt):
    names = ["a.jpg", "a.jpeg", "a.png", "a.webp", "a.tif", "a.tiff", "a.bmp", "a.gif", "a.jpg.png", "a.pgm"]
    plan = tree.plan_folder(names, fmt)
    assert sorted(p[0] for p in plan) == sorted(names)
    outs = [p[1] for p in plan if p[3] is None]
    assert len(outs) == len(set(outs))
    assert all(p[1] == "" and "clash" in p[3] for p in plan if p[3] is not None)
    assert sorted(plan) == sorted(tree.plan_folder(list(reversed(names)), fmt))  # order of listing does not matter


def test_output_path_that_is_not_a_file_is_a_failure_not_a_skip(src, tmp_path):
    out = tmp_path / "out"
    (out / "b.jpg").mkdir(parents=True)
    (out / "sub").mkdir()
    os.symlink(tmp_path / "elsewhere.jpg", out / "sub" / "x.jpg")
    tasks = {t.rel: t for t in tree.walk(src, out)}
    for rel, kind in [("b.jpg", "a directory"), ("sub/x.jpg", "a symbolic link")]:
        assert not tasks[rel].skip
        assert tasks[rel].error == f"output path {out / rel} exists and is {kind}; remove it or choose another output folder"
    assert not (tmp_path / "elsewhere.jpg").exists()
    assert tasks["a.PNG"].error is None and not tasks["a.PNG"].skip


def test_image_names_that_are_not_files_are_reported(tmp_path):
    src = tmp_path / "in"
    touch(src / "ok.jpg")
    os.symlink(src / "missing.jpg", src / "dangling.jpg")
    os.symlink(src / "loop.jpg", src / "loop.jpg")
    os.mkfifo(src / "pipe.png")
    os.symlink(src / "missing.txt", src / "notes.txt")  # no image name: not ours to report
    tasks = {t.rel: t for t in tree.walk(src, tmp_path / "out")}
    assert sorted(tasks) == ["dangling.jpg", "loop.jpg", "ok.jpg", "pipe.png"]
    assert tasks["ok.jpg"].error is None
    assert tasks["dangling.jpg"].error.startswith("not readable: a dangling symbolic link")
    assert tasks["loop.jpg"].error.startswith("not readable: a symbolic link loop")
    assert tasks["pipe.png"].error == "not a regular file (a FIFO)"
    assert tree.count(src) == 4


def test_output_reached_through_a_bind_mount_of_the_input_is_refused(tmp_path):
    src, alias = tmp_path / "in", tmp_path / "alias"
    (src / "sub").mkdir(parents=True)
    alias.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "--bind", str(src), str(alias)], capture_output=True).returncode:
        pytest.skip("needs permission to bind-mount (root)")
    try:
        with pytest.raises(UsageError, match="inside the input folder"):
            tree.check_folders(src, alias / "sub" / "out")
        with pytest.raises(UsageError, match="inside the output folder"):
            tree.check_folders(alias / "sub", src)
    finally:
        subprocess.run(["umount", str(alias)], check=True)


def test_plan_folder_converts_names_to_the_format():
    names = ["a.jpg", "b.png", "c.jpeg", "d.pgm", "notes.txt"]
    assert tree.plan_folder(names, "png") == [
        ("a.jpg", "a.png", "PNG", None), ("b.png", "b.png", "PNG", None), ("c.jpeg", "c.png", "PNG", None),
        ("d.pgm", "d.png", "PNG", None)]
    assert [p[1:3] for p in tree.plan_folder(names, "jpg")] == [
        ("a.jpg", "JPEG"), ("b.jpg", "JPEG"), ("c.jpeg", "JPEG"), ("d.jpg", "JPEG")]
    assert [p[1] for p in tree.plan_folder(["a.tif", "b.bmp"], "tiff")] == ["a.tif", "b.tif"]
    assert [p[1] for p in tree.plan_folder(["a.bmp"], "webp")] == ["a.webp"]
    with pytest.raises(UsageError, match="format: expected one of same, jpg, png, webp, tiff, found 'gif'"):
        tree.plan_folder(["a.jpg"], "gif")


def test_plan_folder_clash_fails_the_input_and_names_the_owners():
    plan = {p[0]: p for p in tree.plan_folder(["a.jpg", "a.png", "a.jpg.png", "b.jpg", "b.webp"], "png")}
    assert plan["a.png"][1:] == ("a.png", "PNG", None) and plan["a.jpg.png"][1:] == ("a.jpg.png", "PNG", None)
    name, out, fmt, why = plan["a.jpg"]
    assert out == "" and "a.png and a.jpg.png are both taken (by a.png and a.jpg.png)" in why
    assert plan["b.jpg"][1] == "b.png" and plan["b.webp"][1] == "b.webp.png"  # sorted order: b.jpg first


def test_walk_with_a_format_skips_by_the_planned_names(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    for rel in ["a.jpg", "sub/b.webp", "sub/c.png"]:
        touch(src / rel)
    touch(out / "a.png")  # done by an earlier --format png run
    touch(out / "sub" / "b.webp")  # an output of a --format same run: not this run's
    tasks = {t.rel: t for t in tree.walk(src, out, out_format="png")}
    assert {r: (t.dst.relative_to(out).as_posix(), t.fmt, t.skip) for r, t in tasks.items()} == {
        "a.jpg": ("a.png", "PNG", True), "sub/b.webp": ("sub/b.png", "PNG", False),
        "sub/c.png": ("sub/c.png", "PNG", False)}
