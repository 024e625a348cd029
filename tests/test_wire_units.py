"""Pure pieces of the wire layer: status text, timeouts, message framing."""

from __future__ import annotations

import pytest

from sdplite.wire.framing import MessageDecoder, encode_message
from sdplite.wire.status import (
    GrpcError,
    StatusCode,
    decode_grpc_message,
    encode_grpc_message,
    format_grpc_timeout,
    parse_grpc_timeout,
    status_for_reset,
)


def test_grpc_message_is_percent_encoded_utf8() -> None:
    assert encode_grpc_message("plain text") == b"plain text"
    assert encode_grpc_message("100%") == b"100%25"
    assert encode_grpc_message("é\n") == b"%C3%A9%0A"
    for text in ["périphérique ✓ 设备", "a%b", "tab\there", ""]:
        assert decode_grpc_message(encode_grpc_message(text)) == text


def test_grpc_message_decoding_never_fails() -> None:
    assert decode_grpc_message(b"bad %zz escape %") == "bad %zz escape %"
    assert decode_grpc_message(b"%FF") == "\ufffd"
    assert decode_grpc_message(b"%e2%9c%93 %4") == "\u2713 %4"  # lower-case hex; a cut-off escape
    # A raw non-ASCII byte becomes U+FFFD and does not join the escapes around it.
    assert decode_grpc_message(b"%C3\xa9%C3%A9") == "\ufffd\ufffd\u00e9"
    assert encode_grpc_message("\ud800") == b"?"  # a lone surrogate: replaced, not an error


@pytest.mark.parametrize(
    "value,seconds",
    [
        (b"1H", 3600),
        (b"2M", 120),
        (b"3S", 3),
        (b"4m", 0.004),
        (b"5u", 5e-6),
        (b"6n", 6e-9),
        (b"99999999S", 99999999),
    ],
)
def test_grpc_timeout_units(value: bytes, seconds: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"123456789S", b"12X", b"-1S", b"1.5S", b"1s"])
def test_malformed_grpc_timeouts(value: bytes) -> None:
    with pytest.raises(ValueError):
        parse_grpc_timeout(value)


def test_timeouts_format_with_the_finest_unit_that_fits() -> None:
    assert format_grpc_timeout(0.05) == b"50000000n"
    assert format_grpc_timeout(0.5) == b"500000u"
    assert format_grpc_timeout(30) == b"30000000u"
    assert format_grpc_timeout(1e6) == b"1000000S"
    for seconds in (0.001, 1, 29.9999, 3600, 1e7):
        assert parse_grpc_timeout(format_grpc_timeout(seconds)) >= seconds


def test_reset_codes_map_as_grpc_go_does() -> None:
    assert status_for_reset(8) == StatusCode.CANCELLED
    assert status_for_reset(7) == StatusCode.UNAVAILABLE
    assert status_for_reset(3) == StatusCode.RESOURCE_EXHAUSTED
    assert status_for_reset(0xB) == StatusCode.RESOURCE_EXHAUSTED
    assert status_for_reset(0xC) == StatusCode.PERMISSION_DENIED
    assert status_for_reset(0x99) == StatusCode.INTERNAL


def test_decoder_handles_messages_split_and_joined_anyhow() -> None:
    stream = encode_message(b"one") + encode_message(b"") + encode_message(b"three" * 1000)
    for step in (1, 2, 5, 7, 4096, len(stream)):
        decoder = MessageDecoder()
        out = []
        for i in range(0, len(stream), step):
            out += decoder.feed(stream[i : i + step])
        assert out == [b"one", b"", b"three" * 1000]
        assert not decoder.pending


def test_decoder_refuses_oversize_and_compressed_on_the_prefix() -> None:
    with pytest.raises(GrpcError) as info:
        MessageDecoder(max_length=10).feed(b"\x00\x00\x00\x00\x0b")
    assert info.value.code == StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(GrpcError) as info:
        MessageDecoder().feed(b"\x01\x00\x00\x00\x00")
    assert info.value.code == StatusCode.INTERNAL


def test_grpc_error_pickles_and_reads_well() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(GrpcError(StatusCode.NOT_FOUND, "no such device")))
    assert (error.code, error.message, str(error)) == (
        StatusCode.NOT_FOUND,
        "no such device",
        "NOT_FOUND: no such device",
    )


def test_constant_response_blocks_decode_to_our_headers_and_leave_the_table_alone() -> None:
    """The server's precomputed HPACK blocks, mixed with ordinary encoding, decode right."""
    import hpack

    from sdplite.wire.hpack_shortcuts import OK_RESPONSE_HEADERS, OK_TRAILERS, ConstantBlocksEncoder

    encoder, decoder = ConstantBlocksEncoder(), hpack.Decoder()
    other = [(b"grpc-status", b"5"), (b"grpc-message", b"not found")]
    for _ in range(3):
        for headers in (OK_RESPONSE_HEADERS, other, OK_TRAILERS):
            assert decoder.decode(encoder.encode(list(headers)), raw=True) == list(headers)
    assert encoder.encode(list(OK_TRAILERS)) == b"\x00\x0bgrpc-status\x010"  # literal, not indexed
    assert len(decoder.header_table.dynamic_entries) == len(encoder.header_table.dynamic_entries) == 2


def test_constant_blocks_give_way_to_a_pending_table_size_update() -> None:
    """RFC 7541 4.2: after a SETTINGS_HEADER_TABLE_SIZE change, the next block starts with the update."""
    import hpack

    from sdplite.wire.hpack_shortcuts import OK_TRAILERS, ConstantBlocksEncoder

    encoder, decoder = ConstantBlocksEncoder(), hpack.Decoder()
    constant = encoder.encode(list(OK_TRAILERS))
    encoder.header_table_size = 0
    block = encoder.encode(list(OK_TRAILERS))
    assert block != constant and block[0] & 0xE0 == 0x20  # a dynamic table size update first
    assert decoder.decode(block, raw=True) == list(OK_TRAILERS)
    assert encoder.encode(list(OK_TRAILERS)) == constant


def test_the_remembering_decoder_decodes_every_block_as_plain_hpack_does() -> None:
    """Blocks that repeat, that add to the table, evict and resize it: the same headers as hpack's.

    With a few values cycling through a small table, the same bytes (say
    "dynamic entry 1") keep meaning other headers: a remembered block must
    not outlive the table it was decoded against.
    """
    import random

    import hpack

    from sdplite.wire.hpack_shortcuts import RememberingDecoder

    rng = random.Random(7)
    pool = [(b"x-device", f"gpu-{n}".encode()) for n in range(6)] + [
        (b":path", b"/v1beta1.DevicePlugin/Allocate")
    ]
    encoder, ours, plain = hpack.Encoder(), RememberingDecoder(), hpack.Decoder()
    encoder.header_table_size = ours.header_table_size = plain.header_table_size = 160  # 3-4 entries
    seen_again = 0
    blocks: set[bytes] = set()
    for step in range(2000):
        headers = rng.sample(pool, rng.choice([1, 1, 2]))
        if rng.random() < 0.01:
            encoder.header_table_size = rng.choice([0, 96, 160])
        block = encoder.encode(headers)
        seen_again += block in blocks
        blocks.add(block)
        assert ours.decode(block, raw=True) == plain.decode(block, raw=True) == headers, step
    assert seen_again > 1000  # mostly blocks met before: the remembering path is what ran


def test_a_remembered_block_still_meets_a_lowered_header_list_limit() -> None:
    import hpack
    import pytest

    from sdplite.wire.hpack_shortcuts import RememberingDecoder

    encoder, decoder = hpack.Encoder(), RememberingDecoder()
    headers = [(b":path", b"/a.B/C"), (b"x-big", b"v" * 200)]
    decoder.decode(encoder.encode(headers), raw=True)
    block = encoder.encode(headers)  # all indexed now: remembered after one decode
    assert decoder.decode(block, raw=True) == decoder.decode(block, raw=True) == headers
    decoder.max_header_list_size = 100
    with pytest.raises(hpack.OversizedHeaderListError):
        decoder.decode(block, raw=True)
