"""The stream writers' fast paths: a text event's bytes are built around one encoded string,
so they must equal what rendering the whole chunk (or Anthropic event) would give."""

from __future__ import annotations

import json

import pytest

from gateway.anthropic_messages import EventWriter, event
from gateway.openai_chat import ChunkWriter, sse

TEXTS = ["", "plain ", 'quote " and \\ back', "naïve 日本 🎉", "\n\t\u2028"]


@pytest.mark.parametrize("text", TEXTS)
def test_text_events_are_the_chunk_and_delta_they_stand_for(text: str) -> None:
    """The stream's fast paths render exactly what the whole chunk/event would."""
    writer = ChunkWriter("job-1", 'model "x"')
    assert writer.text_event(text) == sse(writer.text(text))
    (payload,) = [line for line in writer.text_event(text).split(b"\n") if line]
    assert json.loads(payload[6:])["choices"][0]["delta"] == {"content": text}
    events = EventWriter("job-1", "m")
    events.text_open = True  # past the block start: one content_block_delta event
    delta = {"type": "text_delta", "text": text}
    assert events.text(text) == event(
        "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
    )
