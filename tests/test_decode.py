"""The shared stream decoder: SSE and NDJSON, fed arbitrary network chunkings."""

from __future__ import annotations

import random

import pytest

from workers.decode import (
    LineSplitter,
    NdjsonDecoder,
    ServerEvent,
    SseDecoder,
    StreamDecodeError,
    make_decoder,
)

ANTHROPIC = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"usage":{"input_tokens":11}}}\n\n'
    b"event: ping\n"
    b'data: {"type": "ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","delta":{"type":"text_delta",'
    b'"text":"h\xc3\xa9llo \xf0\x9f\x98\x80"}}\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}'  # the SDK fixture has no final blank line
)

OPENROUTER = (
    b": OPENROUTER PROCESSING\r\n\r\n"
    b'data: {"choices":[{"delta":{"content":"\xe6\x97\xa5\xe6\x9c\xac"}}]}\r\n\r\n'
    b": OPENROUTER PROCESSING\r\n\r\n"
    b"data: [DONE]\r\n\r\n"
)


def sse_all(data: bytes, cuts: list[int]) -> list[ServerEvent]:
    decoder = SseDecoder()
    events: list[ServerEvent] = []
    start = 0
    for cut in [*cuts, len(data)]:
        events += decoder.feed(data[start:cut])
        start = cut
    return events + decoder.close()


def random_cuts(rng: random.Random, size: int) -> list[int]:
    return sorted(rng.sample(range(1, size), k=rng.randint(0, min(size - 1, 40))))


def test_anthropic_events_with_event_names_and_eof_without_blank_line() -> None:
    events = sse_all(ANTHROPIC, [])
    assert [e.event for e in events] == [
        "message_start",
        "ping",
        "content_block_delta",
        "message_stop",
    ]
    assert "héllo 😀" in events[2].data
    assert events[-1].data == '{"type":"message_stop"}'


def test_comments_are_skipped_and_counted() -> None:
    decoder = SseDecoder()
    events = decoder.feed(OPENROUTER) + decoder.close()
    assert [e.data for e in events] == ['{"choices":[{"delta":{"content":"日本"}}]}', "[DONE]"]
    assert all(e.event == "message" for e in events)
    assert decoder.comments == 2


def test_multi_line_data_is_joined_with_newline_and_one_space_stripped() -> None:
    events = sse_all(b"data: a\ndata:b\ndata:  c\n\n", [])
    assert events == [ServerEvent("a\nb\n c")]


def test_id_retry_and_unknown_fields() -> None:
    events = sse_all(b"id: 7\nretry: 1500\nerror: {}\nfoo\ndata: x\n\nretry: soon\ndata: y\n\n", [])
    assert events[0] == ServerEvent("x", id="7", retry=1500)
    assert events[1] == ServerEvent("y")  # a bad retry is ignored; fields reset per event


def test_blank_lines_alone_dispatch_nothing() -> None:
    assert sse_all(b"\n\n\r\n: ping\n\n", []) == []


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(newline: bytes) -> None:
    data = b"event: a" + newline + b"data: 1" + newline + newline + b"data: 2" + newline * 2
    assert sse_all(data, []) == [ServerEvent("1", event="a"), ServerEvent("2")]


def test_cr_at_chunk_end_followed_by_lf_is_one_line_end() -> None:
    # "data: 1\r" | "\n\r\n" must give one event, not an extra blank line in between.
    assert sse_all(b"data: 1\r\n\r\ndata: 2\r\n\r\n", [8]) == [ServerEvent("1"), ServerEvent("2")]
    assert sse_all(b"data: 1\r\r", [8]) == [ServerEvent("1")]


def test_event_split_across_chunks_is_decoded_once() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b'data: {"a":') == []
    assert decoder.feed(b"1}\n") == []
    assert decoder.feed(b"\n") == [ServerEvent('{"a":1}')]
    assert decoder.close() == []


def test_utf8_character_split_across_chunks() -> None:
    emoji = "😀".encode()
    decoder = SseDecoder()
    assert decoder.feed(b"data: " + emoji[:1]) == []
    assert decoder.feed(emoji[1:3]) == []
    assert decoder.feed(emoji[3:] + b"\n\n") == [ServerEvent("😀")]


def test_leading_bom_is_dropped() -> None:
    assert sse_all(b"\xef\xbb\xbfdata: x\n\n", [1]) == [ServerEvent("x")]


def test_invalid_utf8_is_an_error() -> None:
    with pytest.raises(StreamDecodeError):
        SseDecoder().feed(b"data: \xff\n\n")
    decoder = SseDecoder()
    decoder.feed(b"data: \xe6\x97")  # a truncated character at EOF
    with pytest.raises(StreamDecodeError):
        decoder.close()


def test_oversized_line_or_event_is_an_error() -> None:
    splitter = LineSplitter(max_line=100)
    with pytest.raises(StreamDecodeError):
        for _ in range(4):
            splitter.feed(b"x" * 30)  # an unterminated line keeps growing
    with pytest.raises(StreamDecodeError):
        SseDecoder(max_event=100).feed(b"data: " + b"x" * 200 + b"\n")
    decoder = SseDecoder(max_event=100)
    with pytest.raises(StreamDecodeError):
        for _ in range(4):
            decoder.feed(b"data: " + b"y" * 30 + b"\n")  # many data lines of one event


def test_long_line_in_many_small_chunks() -> None:
    splitter = LineSplitter()
    payload = b"z" * 100_000
    lines: list[str] = []
    for i in range(0, len(payload), 7):
        lines += splitter.feed(payload[i : i + 7])
    assert lines == []
    assert splitter.feed(b"\n") == ["z" * 100_000]


@pytest.mark.parametrize(
    "stream", [ANTHROPIC, OPENROUTER, b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"]
)
def test_any_chunking_gives_the_same_events(stream: bytes) -> None:
    rng = random.Random(1234)
    expected = sse_all(stream, [])
    assert expected
    for _ in range(300):
        assert sse_all(stream, random_cuts(rng, len(stream))) == expected
    # The extreme case: one byte at a time.
    assert sse_all(stream, list(range(1, len(stream)))) == expected


def test_ndjson_lines_any_chunking() -> None:
    data = (
        '{"message":{"content":"ça"},"done":false}\n'
        '{"message":{"content":"😀"},"done":false}\r\n'
        "\n"
        '{"done":true,"eval_count":2}'
    ).encode()
    rng = random.Random(99)

    def run(cuts: list[int]) -> list[ServerEvent]:
        decoder = NdjsonDecoder()
        out: list[ServerEvent] = []
        start = 0
        for cut in [*cuts, len(data)]:
            out += decoder.feed(data[start:cut])
            start = cut
        return out + decoder.close()

    expected = run([])
    assert [e.data for e in expected] == [
        '{"message":{"content":"ça"},"done":false}',
        '{"message":{"content":"😀"},"done":false}',
        '{"done":true,"eval_count":2}',
    ]
    for _ in range(300):
        assert run(random_cuts(rng, len(data))) == expected


def test_make_decoder() -> None:
    assert isinstance(make_decoder("sse"), SseDecoder)
    assert isinstance(make_decoder("ndjson"), NdjsonDecoder)
