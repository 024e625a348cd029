"""Wake up when files appear or vanish in a directory: inotify via ctypes.

No dependency: Linux's inotify through libc. Where it is missing (or the
directory does not exist yet) :class:`DirWatch` has no fd and the caller
polls instead. Events are only a hint to look again; callers always re-check
the files themselves, so a missed or coalesced event costs at most one poll.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
from typing import Optional

__all__ = ["DirWatch"]

log = logging.getLogger("sdplite")

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_IN_ATTRIB = 0x004
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_IGNORED = 0x8000
_MASK = _IN_ATTRIB | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF

#: struct inotify_event: wd, mask, cookie, len; then len bytes of name.
_EVENT = struct.Struct("=iIII")

_libc: Optional[ctypes.CDLL] = None


def _load_libc() -> Optional[ctypes.CDLL]:
    global _libc
    if _libc is None:
        # The C library is already loaded into the interpreter: look the calls up
        # there (dlopen(NULL)) rather than through ctypes.util.find_library, which
        # costs an import of subprocess, shutil and tempfile and may run ldconfig.
        for name in (None, "libc.so.6"):
            try:
                libc = ctypes.CDLL(name, use_errno=True)
                libc.inotify_init1.argtypes = [ctypes.c_int]
                libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            except (OSError, AttributeError):
                continue
            _libc = libc
            break
        else:
            log.debug("inotify_init1 not found in the C library; polling")
            return None
    return _libc


class DirWatch:
    """An inotify watch on one directory; ``fileno()`` is readable after a change."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._fd = -1
        self._wd = -1
        libc = _load_libc()
        if libc is None:
            return
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            log.debug("inotify unavailable (errno %d); polling", ctypes.get_errno())
            return
        self._fd = fd
        self._libc = libc
        self.rewatch()

    @property
    def active(self) -> bool:
        """True while the directory itself is being watched."""
        return self._wd >= 0

    def rewatch(self) -> bool:
        """(Re)attach to the directory, e.g. once it exists again."""
        if self._fd < 0 or self._wd >= 0:
            return self.active
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(self.directory), _MASK)
        self._wd = wd if wd >= 0 else -1
        return self.active

    def fileno(self) -> int:
        return self._fd

    def drain(self) -> list[str]:
        """Read pending events; return the names they concern ('' for the directory)."""
        names: list[str] = []
        if self._fd < 0:
            return names
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return names
            except OSError:
                return names
            offset = 0
            while offset + 16 <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + 16 : offset + 16 + length].split(b"\0", 1)[0]
                names.append(os.fsdecode(raw))
                if mask & (_IN_IGNORED | _IN_DELETE_SELF | _IN_MOVE_SELF):
                    self._wd = -1  # the directory went away; rewatch() when it is back
                offset += 16 + length

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._wd = -1
