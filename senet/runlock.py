"""One run per output_dir: an exclusive lock that the operating system releases when the run dies.

Two trainings started into one folder would otherwise resume each other's live checkpoints and mix
their logs and weights. So a run holds `flock(LOCK_EX)` on `<output_dir>/run.lock` for its whole
life, on a file descriptor kept open. The kernel drops the lock when the process ends in any way,
SIGKILL included, so a lock left by a killed run never blocks the next one; the file itself stays
(deleting it on exit would race with a run that has just opened it) and only says who held it
last. Data-loader workers are forked from the run and would inherit the descriptor, keeping the
lock alive after the run itself was killed; they close their copy right after the fork.

Under paddle.distributed.launch only rank 0 takes the lock (see senet.train.fit). Tools that only
read a run folder or add their own files to it (eval --json, export, analyze_gates) do not take it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

from senet.limits import NotRegularFile, open_regular

LOCK_NAME = "run.lock"
_held_fds: set[int] = set()  # descriptors of locks this process holds, closed in forked children


def _close_in_child() -> None:
    for fd in _held_fds:
        try:
            os.close(fd)  # the child's copy only: the lock stays with the parent's descriptor
        except OSError:
            pass
    _held_fds.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunLockedError(RuntimeError):
    """Another live run holds the folder; the message names it (pid, host, start time)."""


class RunLock:
    """`with RunLock(output_dir):` holds the folder for the body; or call acquire() and release()."""

    def __init__(self, output_dir: str) -> None:
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.fd: int | None = None
        self.notice: str | None = None  # set when the file system cannot lock (the run goes on unlocked)

    def acquire(self) -> None:
        try:  # not through a link: a symlinked run.lock used to truncate the file it points at
            fd = open_regular(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except NotRegularFile as e:
            raise RunLockedError(f"cannot lock output_dir '{os.path.dirname(self.path)}': {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(self._refusal()) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            # Some network and FUSE file systems have no locks; refusing to train there would be worse.
            self.notice = (
                f"cannot lock {self.path} ({e.strerror}): this file system has no file locks, so "
                f"nothing stops a second run from using this folder at the same time"
            )
        self.fd = fd
        _held_fds.add(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)

    def _refusal(self) -> str:
        folder = os.path.dirname(self.path)
        try:
            fd = open_regular(self.path, os.O_RDONLY)
            with os.fdopen(fd) as f:
                holder = json.loads(f.read(4096) or "{}")
            who = f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            who = "a run that is just starting (its details are not written yet)"
        return (
            f"output_dir '{folder}' is in use by another run: {who} (lock {self.path}). Wait for it to end "
            f"or stop it; to start a separate run, set -o output_dir=PATH"
        )

    def release(self) -> None:
        if self.fd is not None:
            _held_fds.discard(self.fd)
            os.close(self.fd)  # closing the last descriptor drops the lock
            self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
