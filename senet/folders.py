"""Output folders written whole or not at all: a temporary folder beside the target, swapped into place.

tools/convert_weights.py and tools/export.py write every file of their output into a temporary
folder `.<name>.tmp-<pid>-<random>` beside it and only then put it in place, so a full disk, a crash
or a signal leaves the previous output as it was (issue 23: a re-export on a filling disk replaced
model.pdiparams in place, and infer then failed its SHA-256 check against the old inference.yml). On
Linux the swap is one renameat2(RENAME_EXCHANGE): at every instant the path holds either the old or
the new folder. Temporaries whose process is gone (SIGKILL, power loss) are removed by the next run
of the same command.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
from collections.abc import Iterator

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _umask() -> int:
    """The process's umask (read by setting it, then putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_prefix(out_dir: str) -> str:
    return f".{os.path.basename(os.path.abspath(out_dir).rstrip('/'))}.tmp-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_temporaries(out_dir: str) -> list[str]:
    """Remove the temporary folders of out_dir whose process is gone; return them. A folder of a process
    still running is another command's: left alone."""
    parent, prefix = os.path.dirname(os.path.abspath(out_dir)), temp_prefix(out_dir)
    removed = []
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        removed.append(os.path.join(parent, name))
    return removed


def new_temp_folder(out_dir: str) -> str:
    """A new temporary folder beside out_dir (after removing stale ones), with the mode the umask gives a
    new folder (mkdtemp makes 0700, which the finished output would keep)."""
    out_dir = os.path.abspath(out_dir)
    remove_stale_temporaries(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f"{temp_prefix(out_dir)}{os.getpid()}-", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def remove_own_temporaries(out_dir: str) -> None:
    """Remove this process's temporary folders of out_dir, except a previous output waiting under an
    "-old-" name in swap_into_place's two-rename fallback (the next run removes it, as before)."""
    parent, prefix = os.path.dirname(os.path.abspath(out_dir)), f"{temp_prefix(out_dir)}{os.getpid()}-"
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            if name.startswith(prefix) and not name.startswith(prefix + "old-"):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


@contextlib.contextmanager
def temp_folder_for(out_dir: str) -> Iterator[str]:
    """A new temporary folder beside out_dir (new_temp_folder), removed if the body raises, a stop
    signal's exception included. Removed by its name's pid, not by the path the body received: a
    signal that lands after mkdtemp made the folder but before its path was returned (seen in a full
    test run under load) would otherwise leave it."""
    try:
        yield new_temp_folder(out_dir)
    except BaseException:
        remove_own_temporaries(out_dir)
        raise


def swap_into_place(tmp: str, out_dir: str) -> None:
    """Put the finished folder `tmp` at out_dir; the folder that was there (if any) is removed after."""
    out_dir = os.path.abspath(out_dir)
    if not os.path.lexists(out_dir):
        os.rename(tmp, out_dir)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None and renameat2(_AT_FDCWD, tmp.encode(), _AT_FDCWD, out_dir.encode(), _RENAME_EXCHANGE) == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
        return
    # No atomic exchange (another OS, an old kernel, a file system without it): two renames; between them
    # the old folder waits under a temporary name, which the next run removes.
    old = tempfile.mkdtemp(prefix=f"{temp_prefix(out_dir)}{os.getpid()}-old-", dir=os.path.dirname(out_dir))
    os.rmdir(old)
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
