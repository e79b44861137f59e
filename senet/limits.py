"""Bounds on the work a hostile file can cause: regular files only, bounded object trees, digests.

Every reader of images, lists, configs, checkpoints and exported models asks `regular_file_problem`
before it opens a file: a FIFO, a device or a socket named `x.jpg` would block `open()` or stream
without end, so it is refused from its `os.stat` alone, without opening it.

Unpickled data is walked with `check_tree` before anything else touches it. Pickle memoises
objects, so a 390-byte file of lists that share references is a tree of 2^30 leaves to any code
that walks it (ours, `copy.deepcopy`, `np.asarray`); a pickle nested 100,000 deep makes every
recursive walk raise RecursionError. The walk counts nodes as a tree (shared ones every time they
are reached) and stops at the first bound.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np

# A whole ResNet-152 training checkpoint (model, momentum, EMA, RNG, config, history) is ~10^4
# nodes; 10^6 leaves two orders of magnitude of room and takes ~0.3 s to walk.
MAX_TREE_NODES = 1_000_000
# Our checkpoints nest 5 deep (state -> optimizer -> LR scheduler -> ...); Python's recursion
# limit is 1000.
MAX_TREE_DEPTH = 64


class TreeTooLarge(ValueError):
    """Unpickled data that expands beyond MAX_TREE_NODES nodes or MAX_TREE_DEPTH levels (or holds object arrays)."""


@dataclass(frozen=True)
class FileProblem:
    """Why a path must not be read as a data file. Callers branch on `missing` (each has its own
    message for a file that is not there) and print the rest as it is (`str(problem)`)."""

    kind: str  # "missing" (no such file, or a broken link) | "unreadable" | "not_regular"
    text: str  # "does not exist" | "cannot be read (Permission denied)" | "is a FIFO (named pipe), not a ..."

    @property
    def missing(self) -> bool:
        return self.kind == "missing"

    def __str__(self) -> str:
        return self.text


def regular_file_problem(path: str) -> FileProblem | None:
    """Why `path` must not be read as a data file (missing, unreadable, a FIFO ...), or None if it is fine.

    Uses os.stat only (symlinks followed), so a FIFO or device is never opened.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return FileProblem("missing", "does not exist")
    except OSError as e:
        return FileProblem("unreadable", f"cannot be read ({e.strerror or e})")
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    kind = (
        "a folder"
        if stat.S_ISDIR(mode)
        else "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a character device"
        if stat.S_ISCHR(mode)
        else "a block device"
        if stat.S_ISBLK(mode)
        else "not a regular file"
    )
    return FileProblem("not_regular", f"is {kind}, not a regular file; only regular files are read")


class NotRegularFile(OSError):
    """A file the project creates or writes (in a run folder) that is a link, a FIFO, a device or a socket."""


def open_regular(path: str, flags: int, mode: int = 0o644) -> int:
    """os.open(path, flags | O_NOFOLLOW | O_CLOEXEC), refusing anything but a regular file (issue 23).

    A run folder is the user's, and anything may sit in it: `run.lock` or `train.log` as a symlink used
    to truncate or append to the file it points at (a root run then overwrites any file), and a FIFO
    blocked the open or failed with a bare errno. The open does not follow a final symlink (ELOOP) and
    does not block on a FIFO (O_NONBLOCK, cleared again for a regular file); the descriptor's fstat
    decides. Raises NotRegularFile naming the path."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularFile(
                errno.ELOOP, f"{path} is a symbolic link, which is never written through; remove it", path
            ) from None
        if e.errno == errno.EISDIR:
            raise NotRegularFile(errno.EISDIR, f"{path} is a folder, not a regular file; remove it", path) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = regular_file_problem(path) or "not a regular file"
        raise NotRegularFile(errno.EINVAL, f"{path} {kind}; remove it", path)
    os.set_blocking(fd, True)
    return fd


def check_tree(
    obj: Any, max_nodes: int = MAX_TREE_NODES, max_depth: int = MAX_TREE_DEPTH, max_array_bytes: int | None = None
) -> int:
    """Count the nodes of `obj` walked as a tree (dict keys and values, lists, tuples, sets); raise
    TreeTooLarge past either bound, or when its arrays, each counted every time it is reached, hold more
    than max_array_bytes (one array stored once under 1,002 names is 1,002 arrays to whoever copies them
    per name: 2.4 GB from a small file, issue 23). Iterative: a deep nest cannot raise RecursionError."""
    nodes = array_bytes = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise TreeTooLarge(
                f"more than {max_nodes:,} objects when expanded (shared references repeated: a pickle bomb?)"
            )
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = item
        elif isinstance(item, np.ndarray) and item.dtype.hasobject:
            raise TreeTooLarge("a numpy array of Python objects (dtype object), which plain tensors never are")
        else:
            if isinstance(item, np.ndarray) and max_array_bytes is not None:
                array_bytes += item.nbytes
                if array_bytes > max_array_bytes:
                    raise TreeTooLarge(
                        f"arrays of more than {max_array_bytes:,} bytes when each reference is "
                        "counted (one array stored under many names?)"
                    )
            continue
        if depth >= max_depth and len(children):
            raise TreeTooLarge(f"nested more than {max_depth} levels deep")
        if len(children) > max_nodes:
            raise TreeTooLarge(f"a container of {len(children):,} items, more than the {max_nodes:,} allowed")
        stack.extend((c, depth + 1) for c in children)
    return nodes


def array_budget(file_bytes: int) -> int:
    """What a pickle of `file_bytes` may hold in arrays, each reference counted: twice its size (a few
    legitimately shared arrays), plus 16 MiB for small files."""
    return 2 * file_bytes + (16 << 20)


def shared_arrays(mapping: dict) -> tuple[str, str] | None:
    """Two keys of `mapping` whose values are the same array object (a state dict stores each tensor
    once); None if there are none."""
    seen: dict[int, str] = {}
    for key, value in mapping.items():
        arr = value[1] if isinstance(value, tuple) and len(value) == 2 else value
        if isinstance(arr, np.ndarray):
            if id(arr) in seen:
                return seen[id(arr)], str(key)
            seen[id(arr)] = str(key)
    return None


def file_kind(path: str) -> str | None:
    """What a weights file really is, from its first bytes: "safetensors", "pickle", "torch zip",
    "gzip", "image", or None if none of these (a message then says "truncated or corrupt"). For a
    message that names a renamed file rightly (issue 23: a .safetensors renamed .pdparams was called
    "truncated or corrupt")."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        size = os.path.getsize(path)
    except OSError:
        return None
    if len(head) >= 10 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if head[:4] == b"PK\x03\x04":
        return "torch zip"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:3] == b"\xff\xd8\xff" or head[:8] == b"\x89PNG\r\n\x1a\n":
        return "image"
    return None


RENAMED = {
    "safetensors": "a safetensors file: rename it to .safetensors",
    "pickle": "a pickle (a .pdparams checkpoint?): rename it to .pdparams",
    "torch zip": "a torch .pth file: convert it with tools/convert_weights.py",
    "gzip": "a gzip archive, not weights",
    "image": "an image, not weights",
}


def os_error_fix(e: OSError, elsewhere: bool = True) -> str:
    """The fix for a failed write, by what really happened: a full disk is not a permission problem.
    With `elsewhere`, it also offers another output_dir (not for files that must go beside `last`)."""
    writable = "Make the folder writable for this user"
    fixes = {
        errno.ENOSPC: "Free disk space",
        errno.EDQUOT: "Free disk space (you are over quota)",
        errno.EACCES: writable,
        errno.EPERM: writable,
        errno.EROFS: "The file system is read-only: remount it read-write",
        errno.EISDIR: "A folder stands where the file goes: move it away",
        errno.ENOTDIR: "A file stands where a folder goes: move it away",
        errno.EEXIST: "A file stands where a folder goes: move it away",
        errno.EIO: "The disk reported an I/O error: check it (dmesg)",
        errno.ENAMETOOLONG: "Shorten the path",
    }
    fix = fixes.get(e.errno, "Fix the path")
    return f"{fix} or set -o output_dir=PATH" if elsewhere else fix


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's content, read in 4 MiB chunks (no whole-file copy in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
