"""Atomic writes: a file or folder appears whole or not at all, and a failure keeps what was there."""

import json
import os
import subprocess
import sys
import time

import pytest

from tfdnadet import atomic
from tfdnadet.atomic import atomic_path, write_json


def test_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out" / "result.json"
    write_json(str(path), {"a": 1})
    write_json(str(path), {"a": 2, "b": [1.5]})
    assert json.loads(path.read_text()) == {"a": 2, "b": [1.5]}
    assert os.listdir(path.parent) == ["result.json"]


def test_a_failure_inside_keeps_the_old_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(folder), directory=True) as temporary:
            open(os.path.join(temporary, "weights"), "w").write("half")
            raise RuntimeError("killed")
    assert (folder / "weights").read_text() == "old"
    assert os.listdir(tmp_path) == ["model"]


def test_a_folder_replaces_a_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights").write_text("old")
    with atomic_path(str(folder), directory=True) as temporary:
        open(os.path.join(temporary, "weights"), "w").write("new")
    assert (folder / "weights").read_text() == "new"
    assert os.listdir(tmp_path) == ["model"]


def test_without_overwrite_a_folder_written_meanwhile_is_kept(tmp_path):
    folder = tmp_path / "1"
    with pytest.raises(FileExistsError):
        with atomic_path(str(folder), directory=True, overwrite=False) as temporary:
            open(os.path.join(temporary, "weights"), "w").write("mine")
            folder.mkdir()
            (folder / "weights").write_text("theirs")
    assert (folder / "weights").read_text() == "theirs"
    assert os.listdir(tmp_path) == ["1"]


def test_a_temporary_folder_has_mkdir_s_mode_not_0700(tmp_path):
    old_umask = os.umask(0o022)
    try:
        with atomic_path(str(tmp_path / "version"), directory=True) as temporary:
            open(os.path.join(temporary, "saved_model.pb"), "w").write("x")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "version").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "version" / "saved_model.pb").stat().st_mode & 0o777 == 0o644


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = atomic._HOST
    names = {
        "dead": f".model.tmp-{dead.pid}-{host}-abc",
        "dead_old": f".model.old-{dead.pid}-{host}-abc",
        "alive": f".model.tmp-{os.getpid()}-{host}-abc",
        "other_host": f".model.tmp-{dead.pid}-00000000-abc",
        "ancient": ".model.tmp-k3j2h1",  # written before temporaries named their writer
        "other_name": f".model2.tmp-{dead.pid}-{host}-abc",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
    ancient = time.time() - atomic.STALE_AFTER_S - 60
    os.utime(tmp_path / names["ancient"], (ancient, ancient))
    with atomic_path(str(tmp_path / "model"), directory=True) as temporary:
        open(os.path.join(temporary, "weights"), "w").write("new")
    left = sorted(os.listdir(tmp_path))
    assert left == sorted(["model", names["alive"], names["other_host"], names["other_name"]])
