"""Write files and folders to a temporary path, then rename into place, so a kill never leaves half a file."""

import contextlib
import json
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_path(final_path: str, directory: bool = False, overwrite: bool = True):
    """Yield a temporary path beside `final_path`; on success it replaces `final_path` in one rename.

    With `overwrite=False` a folder that appeared at `final_path` meanwhile (another process) is kept and
    FileExistsError is raised.
    """
    parent = os.path.dirname(os.path.abspath(final_path))
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(final_path)
    if directory:
        temporary = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    else:
        handle, temporary = tempfile.mkstemp(prefix=f".{base}.tmp-", suffix=os.path.splitext(final_path)[1], dir=parent)
        os.close(handle)
        os.remove(temporary)
    try:
        yield temporary
        if overwrite:
            _replace(temporary, final_path, directory)
        else:
            _rename_new(temporary, final_path)
    finally:
        _remove(temporary)


def write_json(path: str, value) -> None:
    """Write `value` as indented JSON, atomically."""
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)


def _replace(temporary: str, final_path: str, directory: bool) -> None:
    if not directory or not os.path.exists(final_path):
        os.replace(temporary, final_path)
        return
    # A folder cannot replace a non-empty folder in one step: move the old one aside first.
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(final_path)}.old-", dir=os.path.dirname(os.path.abspath(final_path)))
    os.rmdir(old)
    os.replace(final_path, old)
    os.replace(temporary, final_path)
    _remove(old)


def _rename_new(temporary: str, final_path: str) -> None:
    """Rename into place only when nothing holding files is there (rename onto a non-empty folder fails)."""
    if os.path.isfile(final_path):
        raise FileExistsError(final_path)
    try:
        os.rename(temporary, final_path)
    except OSError as exc:
        raise FileExistsError(final_path) from exc


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)
