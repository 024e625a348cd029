"""Two facts about a Unix socket's file: how long its path may be, and which file it is.

A Unix socket address holds at most 108 bytes of path on Linux, the last one
the terminating NUL (``sun_path`` in unix(7)); a longer path fails at bind
time with an error that does not say why, so the server and the name checks
refuse it first, both against :data:`MAX_UNIX_PATH`.

A path names a *file* only for a moment: the kubelet deletes plugin sockets
and re-creates its own. An inode number alone does not tell the new file from
the old one, because ext4 and tmpfs hand a freed inode number to the next file
at once; the inode's change time (set at creation) does. So a file's identity
is (device, inode, ctime in ns), taken with ``lstat`` so that a symlink is
never followed (docs/design.md, "How a restart is detected").
"""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["MAX_UNIX_PATH", "FileId", "file_id", "path_too_long"]

#: Longest path a Unix socket address can hold on Linux (108 bytes with the NUL).
MAX_UNIX_PATH = 107

FileId = tuple[int, int, int]


def file_id(path: str) -> Optional[FileId]:
    """(device, inode, ctime_ns) of the file at ``path`` (not following a symlink), None if none."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def path_too_long(path: str) -> Optional[int]:
    """The path's length in bytes if it is over :data:`MAX_UNIX_PATH`, else None."""
    size = len(os.fsencode(path))
    return size if size > MAX_UNIX_PATH else None
