from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.messages import (
    ErrorSendingFrame,
    Event,
    FrameRendered,
    NewUsers,
    RenderingCompleted,
    UserDisconnected,
    from_body,
    parse,
)
from supervisor.refusals import Refused

KEY = "SESSION_SUPERVISOR_abc123"


def body(topic: str, data: dict, **extra: object) -> bytes:
    return json.dumps({"topic": topic, "data": data, **extra}).encode()


def test_new_users_parsed() -> None:
    event = parse(
        body("new-users", {"user_list": ["u1", "u2", "u1"], "session_supervisor_id": "abc123"}), KEY
    )
    assert event == NewUsers("abc123", user_ids=("u1", "u2"))


def test_frame_rendered_parsed() -> None:
    data = {
        "user-id": "u1",
        "frame-number": 7,
        "image-extension": "PNG",
        "image-binary-path": "temp/abc/u1/7.png",
    }
    event = parse(body("user-frame-rendered", data, **{"supervisor-id": "abc123"}), KEY)
    assert event == FrameRendered(
        "abc123",
        user_id="u1",
        frame_number=7,
        extension="png",
        temp_key="temp/abc/u1/7.png",
    )


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            body(
                "user-frame-rendered",
                {
                    "user_id": "u1",
                    "frame-number": "12",
                    "image-extension": "png",
                    "image-binary-path": "t/1.png",
                },
            ),
            12,
        ),
        (
            body(
                "user-frame-rendered",
                {
                    "user-id": "u1",
                    "frame-number": " -3 ",
                    "image-extension": "png",
                    "image-binary-path": "t/1.png",
                },
            ),
            -3,
        ),
    ],
)
def test_tolerated_variants(message: bytes, expected: int) -> None:
    assert parse(message, KEY).frame_number == expected


def test_rendering_completed_under_payload() -> None:
    message = json.dumps({"topic": "user-rendering-completed", "payload": {"user-id": "u9"}})
    assert parse(message, KEY) == RenderingCompleted("abc123", user_id="u9")


def test_disconnected_with_either_spelling() -> None:
    for name in ("user_id", "user-id"):
        assert parse(body("user-disconnected", {name: "u3"}), KEY).user_id == "u3"


def test_error_sending_frame_keeps_a_hash_only_when_one_is_sent() -> None:
    data = {"user-id": "u1", "frame-number": 4, "blend-file-hash": ""}
    assert parse(body("user-error-sending-frame", data), KEY) == ErrorSendingFrame(
        "abc123", user_id="u1", frame_number=4
    )


# The inbox's `body` column holds events in this JSON form; rows written by an earlier
# release may still be waiting when a new one starts, so the form must keep parsing.
INBOX_BODIES = [
    (
        {"topic": "new-users", "session_id": "abc123", "user_ids": ["u1", "u2"]},
        NewUsers("abc123", user_ids=("u1", "u2")),
    ),
    (
        {
            "topic": "user-frame-rendered",
            "session_id": "abc123",
            "user_id": "u1",
            "frame_number": 0,
            "extension": "png",
            "temp_key": "temp/abc/u1/0.png",
        },
        FrameRendered(
            "abc123", user_id="u1", frame_number=0, extension="png", temp_key="temp/abc/u1/0.png"
        ),
    ),
    (
        {"topic": "user-rendering-completed", "session_id": "abc123", "user_id": "u9"},
        RenderingCompleted("abc123", user_id="u9"),
    ),
    (
        {"topic": "user-disconnected", "session_id": "abc123", "user_id": "u3"},
        UserDisconnected("abc123", user_id="u3"),
    ),
    (
        {
            "topic": "user-error-sending-frame",
            "session_id": "abc123",
            "user_id": "u1",
            "frame_number": 10,
            "blend_file_hash": "hash-1",
        },
        ErrorSendingFrame("abc123", user_id="u1", frame_number=10, blend_file_hash="hash-1"),
    ),
    (
        {
            "topic": "user-error-sending-frame",
            "session_id": "abc123",
            "user_id": "u1",
            "frame_number": 10,
        },
        ErrorSendingFrame("abc123", user_id="u1", frame_number=10),
    ),
]


@pytest.mark.parametrize(("stored", "event"), INBOX_BODIES)
def test_inbox_bodies_parse_and_keep_their_form(stored: dict, event: Event) -> None:
    assert from_body(json.loads(json.dumps(stored))) == event
    assert event.to_body() == stored


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        ({"topic": "fly-away", "session_id": "abc123"}, "unknown-topic"),
        ({"session_id": "abc123", "user_id": "u1"}, "unknown-topic"),
        ({"topic": "user-disconnected", "session_id": "abc123"}, "incomplete-event"),
        (
            {"topic": "user-frame-rendered", "session_id": "abc123", "user_id": "u1"},
            "incomplete-event",
        ),
    ],
)
def test_inbox_bodies_that_name_no_event_are_refused(stored: dict, reason: str) -> None:
    with pytest.raises(Refused) as refused:
        from_body(stored)
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("message", "key", "reason"),
    [
        (b"not json", KEY, "not-json"),
        (b"\xff\xfe", KEY, "not-json"),
        (b"[1, 2]", KEY, "not-an-object"),
        (body("new-users", {"user_list": ["u1"]}), "OTHER_KEY", "bad-routing-key"),
        (body("new-users", {"user_list": ["u1"]}), "SESSION_SUPERVISOR_../x", "bad-routing-key"),
        (
            body("new-users", {"user_list": ["u1"]}, **{"supervisor-id": "zzz"}),
            KEY,
            "session-mismatch",
        ),
        (
            body("new-users", {"user_list": ["u1"], "session_supervisor_id": "zzz"}),
            KEY,
            "session-mismatch",
        ),
        (body("fly-away", {}), KEY, "unknown-topic"),
        (json.dumps({"topic": "new-users", "data": [1]}).encode(), KEY, "bad-data"),
        (body("new-users", {"user_list": []}), KEY, "bad-user-list"),
        (body("new-users", {"user_list": "u1"}), KEY, "bad-user-list"),
        (
            body("new-users", {"user_list": ["u" + str(i) for i in range(10_001)]}),
            KEY,
            "bad-user-list",
        ),
        (body("new-users", {"user_list": ["u 1"]}), KEY, "bad-user-id"),
        (body("new-users", {"user_list": [None]}), KEY, "bad-user-id"),
        (body("user-disconnected", {}), KEY, "missing-field"),
        (
            body(
                "user-frame-rendered",
                {
                    "user-id": "u1",
                    "frame-number": 1.5,
                    "image-extension": "png",
                    "image-binary-path": "a/b.png",
                },
            ),
            KEY,
            "bad-frame-number",
        ),
        (
            body(
                "user-frame-rendered",
                {
                    "user-id": "u1",
                    "frame-number": True,
                    "image-extension": "png",
                    "image-binary-path": "a/b.png",
                },
            ),
            KEY,
            "bad-frame-number",
        ),
        (
            body(
                "user-frame-rendered",
                {
                    "user-id": "u1",
                    "frame-number": 99_999_999,
                    "image-extension": "png",
                    "image-binary-path": "a/b.png",
                },
            ),
            KEY,
            "bad-frame-number",
        ),
        (
            body(
                "user-frame-rendered",
                {
                    "user-id": "u1",
                    "frame-number": 1,
                    "image-extension": "png",
                    "image-binary-path": "../etc/passwd",
                },
            ),
            KEY,
            "bad-key",
        ),
        (
            body(
                "user-frame-rendered",
                {
                    "user-id": "u1",
                    "frame-number": 1,
                    "image-extension": "png",
                    "image-binary-path": "/abs/x.png",
                },
            ),
            KEY,
            "bad-key",
        ),
        (
            body(
                "user-frame-rendered",
                {
                    "user-id": "u1",
                    "frame-number": 1,
                    "image-extension": "png",
                    "image-binary-path": "a/\x00b.png",
                },
            ),
            KEY,
            "bad-key",
        ),
        (
            body(
                "user-frame-rendered",
                {
                    "user-id": "u1",
                    "frame-number": 1,
                    "image-extension": "png",
                    "image-binary-path": "http://evil/x",
                },
            ),
            KEY,
            "bad-key",
        ),
        (
            body(
                "user-frame-rendered",
                {
                    "user-id": "u1",
                    "frame-number": 1,
                    "image-extension": "png",
                    "image-binary-path": "%2e%2e/x.png",
                },
            ),
            KEY,
            "bad-key",
        ),
        (
            body(
                "user-frame-rendered",
                {
                    "user-id": "u1",
                    "frame-number": 1,
                    "image-extension": "p/ng",
                    "image-binary-path": "a/b.png",
                },
            ),
            KEY,
            "bad-key",
        ),
        (
            body(
                "user-frame-rendered",
                {
                    "user-id": "u1",
                    "frame-number": 1,
                    "image-extension": "png",
                    "image-binary-path": 7,
                },
            ),
            KEY,
            "bad-key",
        ),
        (b"{" + b" " * (1024 * 1024) + b"}", KEY, "too-large"),
    ],
)
def test_refusals(message: bytes, key: str, reason: str) -> None:
    with pytest.raises(Refused) as refused:
        parse(message, key)
    assert refused.value.reason == reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
topics = st.sampled_from(
    [
        "new-users",
        "user-frame-rendered",
        "user-rendering-completed",
        "user-disconnected",
        "user-error-sending-frame",
        "other",
    ]
)
field_names = st.sampled_from(
    [
        "user_list",
        "user-id",
        "user_id",
        "frame-number",
        "image-extension",
        "image-binary-path",
        "blend-file-hash",
        "x",
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    topic=topics,
    data=st.dictionaries(field_names, json_values, max_size=5),
    key=st.sampled_from([KEY, "SESSION_SUPERVISOR_", None, "junk"]),
)
def test_any_json_is_parsed_or_refused(topic: str, data: dict, key: str | None) -> None:
    try:
        event = parse(json.dumps({"topic": topic, "data": data}), key)
    except Refused:
        return
    assert event.session_id == "abc123"
    assert event.topic == topic


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200))
def test_any_bytes_are_parsed_or_refused(raw: bytes) -> None:
    with contextlib.suppress(Refused):
        parse(raw, KEY)
