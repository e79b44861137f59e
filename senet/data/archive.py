"""Open tar archives with a bound on their extended headers (issue 23).

A tar member may be preceded by an extended header: a GNU long name or long link ('L', 'K') or a
pax header ('x', 'g', Solaris 'X') that holds the member's name and attributes. Python's tarfile
reads such a header whole, into memory, before it returns the member; its size is whatever the
header block claims. A 1 MB .tar.gz whose first member carries a 1 GiB long-name header (zeros
compress 1000:1) took `check_data` to 2.4 GB before any check of ours could run. Every tar reader
of this project (CIFAR tarballs, the ImageNet devkit, train and val tarballs) opens archives through
`open_tar`, whose members refuse an extended header larger than MAX_EXTENDED_HEADER before reading it.
"""

from __future__ import annotations

import tarfile
from typing import Any

# A GNU long name is a path (Linux's PATH_MAX is 4,096 bytes); a pax header holds a few such
# records (path, linkpath, times, user names). 1 MiB is 250 times the longest legitimate path.
MAX_EXTENDED_HEADER = 1 << 20

_EXTENDED = {
    tarfile.GNUTYPE_LONGNAME: "GNU long name",
    tarfile.GNUTYPE_LONGLINK: "GNU long link",
    tarfile.XHDTYPE: "pax",
    tarfile.XGLTYPE: "pax global",
    tarfile.SOLARIS_XHDTYPE: "Solaris pax",
}


class ExtendedHeaderTooLarge(tarfile.TarError):
    """An extended header (GNU long name/link, pax) larger than MAX_EXTENDED_HEADER."""


class BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that checks an extended header's declared size before tarfile reads it.

    tarfile dispatches every header block through _proc_member (Python 3.8 to 3.13), which reads an
    extended header's whole body next; the size comes from the block just parsed."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
        kind = _EXTENDED.get(self.type)
        if kind is not None and self.size > MAX_EXTENDED_HEADER:
            raise ExtendedHeaderTooLarge(
                f"its member at byte {self.offset:,} has a {kind} header of {self.size:,} bytes (the limit is "
                f"{MAX_EXTENDED_HEADER:,}; a name or attribute list is a few KB): a damaged or hostile archive"
            )
        return super()._proc_member(tarfile_)


def open_tar(path: str | None = None, mode: str = "r:*", fileobj: Any = None) -> tarfile.TarFile:
    """tarfile.open for reading, with extended headers bounded (see the module docstring). Errors are
    tarfile.TarError (ExtendedHeaderTooLarge among them), which callers turn into messages naming the file."""
    if not mode.startswith("r"):
        raise ValueError(f"open_tar reads archives; mode {mode!r} writes")
    return tarfile.open(path, mode, fileobj=fileobj, tarinfo=BoundedTarInfo)
