"""Small parsers on the hot and quick paths."""

from __future__ import annotations

import pytest

from hw_events.messages import header_of
from hw_events.pps import DatumsFinished, DatumsQueued
from hw_events.projection import parse_ack_reply
from hwctl.natsclient import _parse_headers, _parse_url


def test_ack_reply_v1() -> None:
    assert parse_ack_reply("$JS.ACK.HW_FS.cons.1.4021.17.1700000000000000000.3") == (4021, 3)


def test_ack_reply_v2_with_domain_and_account() -> None:
    reply = "$JS.ACK.hub.ACCHASH.HW_FS.cons.1.4021.17.1700000000000000000.0.rand"
    assert parse_ack_reply(reply) == (4021, 0)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nats://127.0.0.1:4222", ("127.0.0.1", 4222, {})),
        ("nats://localhost", ("localhost", 4222, {})),
        (
            "nats://alice:s3cret@nats.example:4333",
            ("nats.example", 4333, {"user": "alice", "pass": "s3cret"}),
        ),
        ("nats://mytoken@127.0.0.1:4222", ("127.0.0.1", 4222, {"auth_token": "mytoken"})),
        ("tls://[::1]:4222", ("::1", 4222, {})),
    ],
)
def test_nats_urls(url: str, expected: tuple[str, int, dict[str, str]]) -> None:
    assert _parse_url(url) == expected


def test_no_responders_status_and_headers() -> None:
    assert _parse_headers(b"NATS/1.0 503\r\n\r\n") == ("503", {})
    assert _parse_headers(b"NATS/1.0\r\nTraceparent: 00-ab-cd-01\r\nX: y: z\r\n\r\n") == (
        "",
        {"Traceparent": "00-ab-cd-01", "X": "y: z"},
    )


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.HW_FS.cons.1.{seq}.17.1700000000000000000.{pending}",
        "$JS.ACK.hub.ACCHASH.HW_FS.cons.1.{seq}.17.1700000000000000000.{pending}.rand",
        "$JS.ACK.hub.ACCHASH.HW_FS.cons.1.{seq}.17.1700000000000000000.{pending}",
    ],
    ids=["v1", "v2", "v2-short"],
)
async def test_the_projector_reads_sequence_and_pending_from_either_reply_layout(reply: str) -> None:
    """The replay hot path parses replies inline (after the first): check it with both layouts."""
    from hw_events.projection import Projector
    from hw_events.streams import StreamKind, StreamSpec
    from hw_fs.domain import PROJECTION

    class NoNats:
        def jetstream(self) -> None:
            return None

    class Delivery:
        def __init__(self, seq: int, pending: int) -> None:
            self.subject, self.data = "hw.fs.evt.x", b"{}"
            self.reply = reply.format(seq=seq, pending=pending)

    projector = Projector(NoNats(), StreamSpec("HW_FS", ("hw.fs.evt.>",), StreamKind.EVENTS), PROJECTION)
    projector._target = 10
    for seq, pending in [(4, 6), (5, 5), (9, 1)]:
        await projector._on_message(Delivery(seq, pending))
        assert (projector.applied, projector.pending) == (seq, pending)
    assert projector.positions["hw.fs.evt.x"] == (9, 3)


def test_an_event_header_names_the_type_and_what_it_is_about_or_is_left_off() -> None:
    def report(pipeline: str, job: str) -> DatumsFinished:
        return DatumsFinished(pipeline=pipeline, job=job, results=[])

    assert header_of(report("edges", "4f2a")) == "datums_finished edges 4f2a"
    assert header_of(DatumsQueued(pipeline="edges", job="4f2a")) == ""  # (a type that names nothing)
    # A value that cannot be told apart from the next: no header, so readers decode the body.
    assert header_of(report("edges", "4f 2a")) == ""
    assert header_of(report("edges", "4f\n2a")) == ""
