"""Write files and folders to a temporary path, then rename into place, so a kill never leaves half a file.

A temporary is named `.NAME.tmp-PID-HOST-RANDOM` beside NAME. A writer that was killed leaves it behind; the
next write of NAME removes the ones whose writer is gone (same host, no such process) or that are older than
STALE_AFTER_S (a writer on another host of a shared file system, or a reused process id).
"""

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import time

STALE_AFTER_S = 24 * 3600  # no write in this package takes a day; a temporary that old is a dead writer's
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


@contextlib.contextmanager
def atomic_path(final_path: str, directory: bool = False, overwrite: bool = True):
    """Yield a temporary path beside `final_path`; on success it replaces `final_path` in one rename.

    A temporary folder gets the mode a plain `mkdir` would (0777 less the umask), not mkdtemp's 0700.
    With `overwrite=False` a folder that appeared at `final_path` meanwhile (another process) is kept and
    FileExistsError is raised.
    """
    parent = os.path.dirname(os.path.abspath(final_path))
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(final_path)
    remove_stale_temporaries(parent, base)
    prefix = f".{base}.tmp-{os.getpid()}-{_HOST}-"
    if directory:
        temporary = _new_folder(parent, prefix)
    else:
        handle, temporary = tempfile.mkstemp(prefix=prefix, suffix=os.path.splitext(final_path)[1], dir=parent)
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


def remove_stale_temporaries(parent: str, base: str) -> list:
    """Remove the `.BASE.tmp-*` / `.BASE.old-*` leftovers of dead writers in `parent`; returns their paths."""
    pattern = re.compile(rf"\.{re.escape(base)}\.(?:tmp|old)-(?:(\d+)-([0-9a-f]{{8}})-)?")
    removed = []
    for entry in os.listdir(parent):
        match = pattern.match(entry)
        path = os.path.join(parent, entry)
        if match and _is_stale(path, match.group(1), match.group(2)):
            _remove(path)
            removed.append(path)
    return removed


def _is_stale(path: str, pid, host) -> bool:
    try:
        age = time.time() - os.lstat(path).st_mtime
    except FileNotFoundError:  # its writer renamed or removed it meanwhile
        return False
    if age > STALE_AFTER_S:
        return True
    return pid is not None and host == _HOST and not process_alive(int(pid))


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (a zombie not yet reaped counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _new_folder(parent: str, prefix: str) -> str:
    """A new empty folder PREFIX<random> with os.mkdir's mode (0777 less the umask): a server running as another user reads it."""
    while True:
        path = os.path.join(parent, prefix + secrets.token_hex(6))
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
            return path


def _replace(temporary: str, final_path: str, directory: bool) -> None:
    if not directory or not os.path.exists(final_path):
        os.replace(temporary, final_path)
        return
    # A folder cannot replace a non-empty folder in one step: move the old one aside first.
    prefix = f".{os.path.basename(final_path)}.old-{os.getpid()}-{_HOST}-"
    old = _new_folder(os.path.dirname(os.path.abspath(final_path)), prefix)
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
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
