"""Two ways around HPACK work that every call repeats (RFC 7541).

Both reach into ``hpack`` 4.x internals (``Encoder.header_table.resized``,
``Decoder.header_table``, ``HeaderTable.add`` and ``maxsize``); h2 is pinned
below 5 and hpack comes with it. tests/test_wire_units.py checks both
against plain hpack, and every interop test runs through them.

1. **Constant response blocks.** The server's encoder answers the two header
   lists every successful unary call sends, ``:status 200, content-type
   application/grpc`` and ``grpc-status 0``, with fixed bytes instead of
   encoding them again (7-14 us each). The blocks use only the static table
   (``:status 200`` is index 8) and literals without indexing (6.1, 6.2.2),
   which leave the dynamic table alone, so they are right in any encoder
   state, except when a dynamic table size update is pending (4.2: it must
   start the next block); then the real encoder runs. h2 passes ``encode`` a
   fresh list built from ours, so the match is by equality.
2. **Remembered request blocks.** A peer calling the same method again sends
   the same header block: every field indexed from the tables. Decoding it
   means the same table lookups each time (about 15 us for a grpc-go
   request). The decoder remembers the headers of a block that left the
   dynamic table as it was, and reuses them while the table, the header list
   limit and the table size limit are unchanged; the table counts its own
   changes. A block that adds entries (a first call, a new ``grpc-timeout``)
   is always decoded in full.
"""

from __future__ import annotations

from typing import Any, Union

import hpack
import hpack.table

__all__ = ["OK_RESPONSE_HEADERS", "OK_TRAILERS", "install_shortcuts"]

#: What a unary call's response starts with, and its trailers when it succeeds.
OK_RESPONSE_HEADERS = ((b":status", b"200"), (b"content-type", b"application/grpc"))
OK_TRAILERS = ((b"grpc-status", b"0"),)

#: Blocks remembered per connection; a peer sending ever new blocks only clears them.
_REMEMBERED = 32


def _literal(name: Union[bytes, int], value: bytes) -> bytes:
    """A literal field without indexing (6.2.2), name by static index or literal.

    No Huffman coding; every integer here fits its prefix or one more byte.
    """

    def integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
        limit = (1 << prefix_bits) - 1
        if value < limit:
            return bytes([first | value])
        assert value - limit < 128
        return bytes([first | limit, value - limit])

    if isinstance(name, int):
        head = integer(name, 4)
    else:
        head = b"\x00" + integer(len(name), 7) + name
    return head + integer(len(value), 7) + value


_STATIC_STATUS_200 = 8
_STATIC_CONTENT_TYPE = 31
_CONSTANT_BLOCKS = (
    (
        [tuple(h) for h in OK_RESPONSE_HEADERS],
        bytes([0x80 | _STATIC_STATUS_200]) + _literal(_STATIC_CONTENT_TYPE, OK_RESPONSE_HEADERS[1][1]),
    ),
    ([tuple(h) for h in OK_TRAILERS], _literal(OK_TRAILERS[0][0], OK_TRAILERS[0][1])),
)


class ConstantBlocksEncoder(hpack.Encoder):
    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        if not self.header_table.resized:
            for fields, block in _CONSTANT_BLOCKS:
                if headers == fields:
                    return block
        return super().encode(headers, huffman)


class _CountingTable(hpack.table.HeaderTable):
    """A dynamic table that counts its changes: entries added, size changed."""

    def __init__(self) -> None:
        self.changes = 0
        super().__init__()

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        hpack.table.HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class RememberingDecoder(hpack.Decoder):
    def __init__(self) -> None:
        super().__init__()
        self._table = self.header_table = _CountingTable()
        self.max_allowed_table_size = self._table.maxsize
        self._remembered: dict[bytes, tuple[tuple[int, int, int], Any]] = {}

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if not raw:  # h2 asks for bytes (header_encoding=None); anything else, in full
            return super().decode(data, raw)
        block = bytes(data)
        table = self._table
        state = (table.changes, self.max_header_list_size, self.max_allowed_table_size)
        known = self._remembered.get(block)
        if known is not None and known[0] == state:
            return list(known[1])
        headers = super().decode(block, raw)
        if table.changes == state[0]:
            if len(self._remembered) >= _REMEMBERED:
                self._remembered.clear()
            self._remembered[block] = (state, headers)
            return list(headers)
        return headers


def install_shortcuts(conn: Any, server_side: bool) -> None:
    """Give a fresh H2Connection the remembering decoder (and, serving, the constant blocks)."""
    decoder = RememberingDecoder()
    decoder.max_header_list_size = conn.decoder.max_header_list_size
    conn.decoder = decoder
    if server_side:
        conn.encoder = ConstantBlocksEncoder()
