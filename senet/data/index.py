"""The file index of an ImageNet-style dataset: class folders or list files, checked and cached.

An index is (paths relative to the dataset root, int64 labels, class names). Paths are kept in one
numpy bytes array rather than a list of 1.28M Python strings: worker processes then share its
pages with the parent instead of copying them as reference counts are touched.

Scanning uses os.scandir (one directory read per class, no stat per file). The result is cached
under `<output_dir>/cache`, keyed on the split folder and the modification times of it and of every
class folder (or of the list file), so a later run starts at once and an added or removed image
or class invalidates the cache.
"""

from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np

from senet.data.decode import IMAGE_EXTENSIONS
from senet.data.errors import IMAGENET_LAYOUT, SMOKE_HINT, DatasetError
from senet.limits import regular_file_problem

MAX_LIST_LINE = 4096  # characters; a path is at most 4096 bytes on Linux (PATH_MAX)

Index = tuple[np.ndarray, np.ndarray, list[str]]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)  # extensions match in any case


def list_class_dirs(split_dir: str) -> list[os.DirEntry]:
    """The class sub-folders of a split folder, sorted by name; hidden folders (.ipynb_checkpoints) are not classes."""
    with os.scandir(split_dir) as it:
        dirs = [e for e in it if e.is_dir() and not e.name.startswith(".")]
    return sorted(dirs, key=lambda e: e.name)


def scan_folders(root: str, split: str, classes: list[str] | None = None) -> Index:
    """Index `root/split/<class>/<image>`. With `classes` (the train classes), labels follow that list."""
    split_dir = os.path.join(root, split)
    dirs = list_class_dirs(split_dir)
    if not dirs:
        with os.scandir(split_dir) as it:
            flat = sum(1 for e in it if e.is_file() and _is_image(e.name))
        what = f"holds {flat} images directly but no class folders" if flat else "has no class folders"
        fix = (
            "; sort a flat val folder with: .venv/bin/python scripts/prepare_imagenet.py --sort-val "
            f"{split_dir} --val-labels LABELS"
            if flat and split == "val"
            else ""
        )
        raise DatasetError(f"{split_dir} {what}{fix}. Expected layout:\n{IMAGENET_LAYOUT.format(root=root)}")
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
    else:
        extra = [n for n in names if n not in set(classes)]
        if extra:
            raise DatasetError(
                f"{split_dir} has {len(extra)} class folders that train/ does not have, e.g. "
                f"{extra[:5]}; labels would not match the train labels. Use the same class "
                "folders in train/ and val/."
            )
    label_of = {name: i for i, name in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    for d in dirs:
        with os.scandir(d.path) as it:
            # not is_dir() rather than is_file(): a dangling symlink is kept, to be reported as unreadable
            files = sorted(e.name for e in it if _is_image(e.name) and not e.is_dir())
        prefix = f"{split}/{d.name}/"
        paths += [prefix + f for f in files]
        labels += [label_of[d.name]] * len(files)
    return _path_array(paths), np.array(labels, dtype=np.int64), list(classes)


def read_list(root: str, list_path: str, num_classes: int) -> Index:
    """Index a list file of `relative/path.jpg label` lines; check every line and that the files exist."""
    paths: list[str] = []
    labels: list[int] = []
    try:
        _read_list_lines(list_path, paths, labels, num_classes)
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"{list_path} is not UTF-8 text ({e.reason} at byte {e.start} of a line); a list file "
            "holds 'relative/path.jpg label' lines"
        ) from None
    if not paths:
        raise DatasetError(f"{list_path} lists no images")
    missing = _missing_files(root, paths)
    if missing:
        shown = "\n  ".join(os.path.join(root, p) for p in missing[:5])
        raise DatasetError(
            f"{list_path} names {len(missing)} files that do not exist under {root}, e.g.:\n  {shown}\n"
            "Paths in a list file are relative to data.root."
        )
    return _path_array(paths), np.array(labels, dtype=np.int64), [str(i) for i in range(num_classes)]


def _read_list_lines(list_path: str, paths: list[str], labels: list[int], num_classes: int) -> None:
    with open(list_path, encoding="utf-8-sig") as f:  # -sig: a BOM from a Windows editor is not part of a path
        # readline with a limit: a file of one endless line must not be read into memory whole
        for lineno, line in enumerate(iter(lambda: f.readline(MAX_LIST_LINE + 1), ""), 1):
            if len(line) > MAX_LIST_LINE:
                raise DatasetError(
                    f"{list_path}:{lineno}: line longer than {MAX_LIST_LINE} characters; each line "
                    "must be 'relative/path.jpg label' (is this a list file?)"
                )
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)  # a path may contain spaces; the label is the last field
            label = parts[1] if len(parts) == 2 else ""
            if not label.lstrip("-").isdigit():
                raise DatasetError(
                    f"{list_path}:{lineno}: malformed line {line.strip()!r}; each line must be "
                    "'relative/path.jpg label' with an integer label"
                )
            if not 0 <= int(label) < num_classes:
                raise DatasetError(
                    f"{list_path}:{lineno}: label {label} is out of range 0..{num_classes - 1} "
                    f"(model.num_classes = {num_classes})"
                )
            paths.append(parts[0])
            labels.append(int(label))


def _path_array(paths: list[str]) -> np.ndarray:
    # os.fsencode round-trips any file name (non-ASCII, undecodable bytes); os.fsdecode undoes it.
    return np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)


def _missing_files(root: str, paths: list[str]) -> list[str]:
    # One directory read per folder instead of one stat per file: much faster for 1.28M files.
    present: dict[str, set[str]] = {}
    missing = []
    for p in paths:
        folder, name = os.path.split(p)
        if folder not in present:
            try:
                with os.scandir(os.path.join(root, folder)) as it:
                    present[folder] = {e.name for e in it}
            except OSError:
                present[folder] = set()
        if name not in present[folder]:
            missing.append(p)
    return missing


def _key(*parts: object) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def folder_key(root: str, split: str) -> str:
    """Cache key of a class-folder split: its path and the modification times of it and its class folders."""
    split_dir = os.path.abspath(os.path.join(root, split))
    dirs = list_class_dirs(split_dir)
    return _key("folders", split_dir, os.stat(split_dir).st_mtime_ns, [(d.name, d.stat().st_mtime_ns) for d in dirs])


def list_key(root: str, list_path: str, num_classes: int) -> str:
    """Cache key of a list file: its path, size and modification time, the root and the class count."""
    st = os.stat(list_path)
    root = os.path.abspath(root)
    return _key(
        "list", os.path.abspath(list_path), st.st_size, st.st_mtime_ns, root, os.stat(root).st_mtime_ns, num_classes
    )


def load_cached(cache_dir: str, name: str, key: str) -> Index | None:
    """The cached index `name` if its key matches, else None."""
    path = os.path.join(cache_dir, f"index-{name}.npz")
    if regular_file_problem(path):  # absent, or a FIFO that would block np.load: rebuild the index
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return z["paths"], z["labels"].astype(np.int64), [str(c) for c in z["classes"]]
    except Exception:  # noqa: BLE001  (a torn or damaged cache of any kind is rebuilt, never fatal)
        return None


def save_cached(cache_dir: str, name: str, key: str, index: Index) -> None:
    """Write the index atomically, so ranks writing at once never leave a torn file."""
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"index-{name}.npz")
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    paths, labels, classes = index
    np.savez(tmp, key=np.array(key), paths=paths, labels=labels, classes=np.array(classes, dtype=np.str_))
    os.replace(tmp, path)


def imagenet_index(root: str, split: str, list_path: str | None, num_classes: int, cache_dir: str | None) -> Index:
    """The index of one ImageNet split: from the cache, a list file, or the class folders."""
    if not os.path.isdir(root):
        where = f"dataset root {os.path.abspath(root)} does not exist" if root else "data.root is not set"
        raise DatasetError(
            f"{where} (data.root = {root!r}). Expected layout:\n{IMAGENET_LAYOUT.format(root=root)}\n{SMOKE_HINT}"
        )
    if list_path is not None:
        if not os.path.lexists(list_path) and os.path.lexists(os.path.join(root, list_path)):
            list_path = os.path.join(root, list_path)  # list paths may be given relative to the root
        problem = regular_file_problem(list_path)
        if problem and problem.missing:
            raise DatasetError(f"data.{split}_list file {list_path} does not exist (nor under {root})")
        if problem:  # a FIFO or device would block the reader: refused without opening it
            raise DatasetError(f"data.{split}_list file {list_path} {problem}; give a list file")
        key = list_key(root, list_path, num_classes)
        build = lambda: read_list(root, list_path, num_classes)  # noqa: E731
    else:
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            raise DatasetError(
                f"{os.path.abspath(split_dir)} does not exist. Expected layout:\n"
                f"{IMAGENET_LAYOUT.format(root=root)}\n{SMOKE_HINT}"
            )
        # val takes its labels from train's class list when train/ exists, so the two always agree.
        train_dir = os.path.join(root, "train")
        classes = None
        if split != "train" and os.path.isdir(train_dir):
            classes = [d.name for d in list_class_dirs(train_dir)]
        key = folder_key(root, split) + ("" if classes is None else _key(classes))
        build = lambda: scan_folders(root, split, classes)  # noqa: E731
    name = f"{split}-{key}"
    index = load_cached(cache_dir, name, key) if cache_dir else None
    if index is None:
        index = build()
        if cache_dir:
            try:
                save_cached(cache_dir, name, key, index)
            except OSError as e:  # a read-only output dir must not stop training
                warnings.warn(f"could not cache the {split} index in {cache_dir}: {e}", stacklevel=2)
    if len(index[0]) == 0:
        raise DatasetError(f"the {split} split under {root} has no images ({', '.join(IMAGE_EXTENSIONS)}, any case)")
    if list_path is None:  # warned on every run, cached or not
        counts = np.bincount(index[1], minlength=len(index[2]))
        empty = [os.path.join(root, split, index[2][i]) for i in np.flatnonzero(counts == 0)]
        if empty:
            warnings.warn(
                f"{len(empty)} empty or missing class folder(s) in {split}/, e.g. {empty[:5]}: no image "
                f"files ({', '.join(IMAGE_EXTENSIONS)}, any case). Their labels are kept.",
                stacklevel=3,
            )
    return index
