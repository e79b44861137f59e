"""The 1000 ILSVRC2012 (ImageNet-1k) classes in index order: WordNet ids and readable names.

Index i is the i-th WordNet id in sorted order, the order every ImageNet model here, in timm,
torchvision and PaddleClas uses. The names are WordNet's lemmas (imagenet_classes.tsv, from timm's
imagenet_synset_to_lemma table); `imagenet_classes()` gives the first lemma of each, e.g. "tench".
"""

from __future__ import annotations

import functools
import os

_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.tsv")


@functools.cache
def imagenet_table() -> tuple[tuple[str, str], ...]:
    """((wnid, all lemmas), ...) in index order."""
    with open(_TABLE, encoding="utf-8") as f:
        rows = [tuple(line.rstrip("\n").split("\t", 1)) for line in f if line.strip() and not line.startswith("#")]
    assert len(rows) == 1000, f"{_TABLE} must list 1000 classes, has {len(rows)}"
    return tuple(rows)  # type: ignore[return-value]


def imagenet_classes() -> list[str]:
    """Short readable names ("tench", "goldfish", ...), index order."""
    return [lemmas.split(",")[0].strip() for _, lemmas in imagenet_table()]


def imagenet_names_for(classes: list[str] | None, num_classes: int) -> list[str] | None:
    """Readable names for a 1000-class ImageNet model: from its dataset's WordNet-id folders when they
    are exactly the ILSVRC2012 ones, or when no dataset is at hand; None otherwise."""
    if num_classes != 1000:
        return None
    wnids = [w for w, _ in imagenet_table()]
    if classes is None or list(classes) == wnids:
        return imagenet_classes()
    return None
