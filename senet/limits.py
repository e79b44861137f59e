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

import hashlib
import os
import stat
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


def regular_file_problem(path: str) -> str | None:
    """Why `path` must not be read as a data file ("does not exist", "is a FIFO ..."), or None if it is fine.

    Uses os.stat only (symlinks followed), so a FIFO or device is never opened.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "not a regular file")
    return f"is {kind}, not a regular file; only regular files are read"


def check_tree(obj: Any, max_nodes: int = MAX_TREE_NODES, max_depth: int = MAX_TREE_DEPTH) -> int:
    """Count the nodes of `obj` walked as a tree (dict keys and values, lists, tuples, sets); raise
    TreeTooLarge past either bound. Iterative: a deep nest cannot raise RecursionError here."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise TreeTooLarge(f"more than {max_nodes:,} objects when expanded (shared references "
                               "repeated: a pickle bomb?)")
        if isinstance(item, dict):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = item
        elif isinstance(item, np.ndarray) and item.dtype.hasobject:
            raise TreeTooLarge("a numpy array of Python objects (dtype object), which plain tensors never are")
        else:
            continue
        if depth >= max_depth and len(children):
            raise TreeTooLarge(f"nested more than {max_depth} levels deep")
        if len(children) > max_nodes:
            raise TreeTooLarge(f"a container of {len(children):,} items, more than the {max_nodes:,} allowed")
        stack.extend((c, depth + 1) for c in children)
    return nodes


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's content, read in 4 MiB chunks (no whole-file copy in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
