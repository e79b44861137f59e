"""The one exception type of the data pipeline, and the layout text its messages show."""

from __future__ import annotations


class DatasetError(Exception):
    """A dataset that cannot be used; the message names the problem and the fix.

    It takes one message string, because Paddle re-raises a worker's exception in the main
    process as `type(exc)(formatted_message)`.
    """


class BadImageError(DatasetError):
    """One image file that cannot be decoded; the message names the file."""


IMAGENET_LAYOUT = """\
  {root}/
    train/
      n01440764/  (one folder per class; class names are sorted to give labels 0..K-1)
        n01440764_10026.JPEG
        ...
    val/
      n01440764/  (the same class folders as train/)
        ILSVRC2012_val_00000293.JPEG
        ...
Or give list files with -o data.train_list=train_list.txt -o data.val_list=val_list.txt,
one line per image, "relative/path.jpg label", paths relative to {root}."""

SMOKE_HINT = "For a smoke run without any dataset, add -o data.name=synthetic."
