"""Atomic writes: a file or folder appears whole or not at all, and a failure keeps what was there."""

import json
import os

import pytest

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
