"""Files other programs read while we rewrite them: always whole, never half-written.

A reader (a liveness probe, a container runtime loading CDI specs) must see
either the old content or the new, so every such file is written to a new
temporary file in the same directory and renamed over the old one: rename(2)
replaces the name atomically within one file system.
"""

from __future__ import annotations

import os

__all__ = ["create_temp", "write_atomic"]


def create_temp(directory: str, prefix: str, mode: int = 0o600) -> tuple[int, str]:
    """A new file (opened for writing) with a random name: ``tempfile.mkstemp``'s job,
    without importing tempfile (and shutil, random, ...) into every plugin process."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        path = os.path.join(directory, prefix + os.urandom(6).hex())
        try:
            return os.open(path, flags, mode), path
        except FileExistsError:
            continue


def write_atomic(path: str, data: bytes, mode: int = 0o600, sync: bool = False) -> None:
    """Replace ``path`` with ``data`` in one step (temp file + rename).

    The temporary name starts with a dot and has no extension, so a reader
    that scans the directory for ``*.json`` never sees it. ``sync`` flushes
    the data to disk before the rename: after a crash the file is then the
    old or the new content, never empty.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = create_temp(directory, "." + os.path.basename(path) + ".tmp-", mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed the mode given to open
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
