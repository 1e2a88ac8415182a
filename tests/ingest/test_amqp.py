"""The AMQP source against the real RabbitMQ: ack only after commit, nack when the database
fails, malformed messages kept and acked, prompt stop when the broker is unreachable."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator

import pika
import pytest
import sqlalchemy as sa

from runwatch.config import Settings
from runwatch.db import Database
from runwatch.ingest.amqp import AmqpSource, redacted
from runwatch.ingest.models import MessageStatus, ReceivedMessage
from tests.conftest import server_url
from tests.waiting import wait_for

pytestmark = pytest.mark.rabbitmq

MESSAGE = {
    "name": "RUN.88.JUNODAQ.Physics.ds-2.global_trigger.20250826120000.001_J25.rtraw",
    "url": "root://eos//raw/88/1.rtraw",
    "run": 88,
    "stream": "Physics",
    "sequence": 1,
}


@pytest.fixture
def queue_settings(settings: Settings) -> Iterator[Settings]:
    """Settings with the test broker and a queue of this test's own (deleted afterwards)."""
    settings.ingest.amqp_url = server_url("amqp")
    settings.ingest.amqp_queue = f"runwatch.test.{uuid.uuid4().hex}"
    yield settings
    with broker(settings) as channel:
        channel.queue_delete(settings.ingest.amqp_queue)


class broker:
    """A channel on the test broker, closed on exit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __enter__(self) -> pika.adapters.blocking_connection.BlockingChannel:
        self.connection = pika.BlockingConnection(pika.URLParameters(self.settings.ingest.amqp_url))
        channel = self.connection.channel()
        channel.queue_declare(self.settings.ingest.amqp_queue, durable=True)
        return channel

    def __exit__(self, *exc: object) -> None:
        self.connection.close()


def publish(settings: Settings, body: str) -> None:
    with broker(settings) as channel:
        channel.basic_publish("", settings.ingest.amqp_queue, body.encode())


def waiting(settings: Settings) -> int:
    with broker(settings) as channel:
        frame = channel.queue_declare(settings.ingest.amqp_queue, durable=True, passive=True)
        return int(frame.method.message_count)


def stored(db: Database) -> list[ReceivedMessage]:
    with db.session() as session:
        return list(session.scalars(sa.select(ReceivedMessage)))


def test_a_message_is_stored_then_acked_and_wakes_the_scheduler(
    queue_settings: Settings, db: Database
) -> None:
    publish(queue_settings, json.dumps(MESSAGE))
    source = AmqpSource(queue_settings, db)
    woken = threading.Event()
    source.start(woken.set)
    try:
        wait_for(lambda: len(stored(db)) == 1)
        assert woken.wait(2)
    finally:
        source.stop()
    (message,) = stored(db)
    assert (message.status, message.source) == (MessageStatus.ACCEPTED, "amqp")
    assert json.loads(message.body) == MESSAGE
    assert message.origin == queue_settings.ingest.amqp_queue
    assert waiting(queue_settings) == 0


def test_a_malformed_message_is_kept_as_rejected_and_acked(
    queue_settings: Settings, db: Database
) -> None:
    publish(queue_settings, '{"name": "x.rtraw", "run": "eighty-eight"}')
    source = AmqpSource(queue_settings, db)
    source.start(lambda: None)
    try:
        wait_for(lambda: len(stored(db)) == 1)
    finally:
        source.stop()
    (message,) = stored(db)
    assert message.status is MessageStatus.REJECTED
    assert (message.reason or "").startswith("field 'url': required; field 'run': must be")
    assert waiting(queue_settings) == 0


def test_when_the_database_fails_the_message_stays_in_the_queue(
    queue_settings: Settings, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    with db.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE received_messages"))
    body = json.dumps(MESSAGE)
    publish(queue_settings, body)
    source = AmqpSource(queue_settings, db)
    woken = threading.Event()
    with caplog.at_level(logging.ERROR, logger="runwatch.ingest.amqp"):
        source.start(woken.set)
        try:
            wait_for(lambda: any("not stored; requeued" in r.message for r in caplog.records))
        finally:
            source.stop()
    assert not woken.is_set()
    assert waiting(queue_settings) == 1
    with broker(queue_settings) as channel:
        method, _, again = channel.basic_get(queue_settings.ingest.amqp_queue, auto_ack=True)
    assert method is not None and again.decode() == body


def test_an_unreachable_broker_is_retried_and_stop_is_prompt(
    settings: Settings, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    settings.ingest.amqp_url = "amqp://guest:secret@127.0.0.1:9/%2F"  # discard port: refused
    source = AmqpSource(settings, db)
    with caplog.at_level(logging.WARNING, logger="runwatch.ingest.amqp"):
        source.start(lambda: None)
        wait_for(lambda: sum("reconnecting" in r.message for r in caplog.records) >= 2)
        began = time.monotonic()
        source.stop()
    assert time.monotonic() - began < 2
    assert all("secret" not in r.getMessage() for r in caplog.records)
    assert redacted(settings.ingest.amqp_url) == "amqp://guest:***@127.0.0.1:9/%2F"


def test_the_source_is_enabled_by_a_broker_url(settings: Settings) -> None:
    assert not AmqpSource.enabled(settings)
    settings.ingest.amqp_url = "amqp://broker/"
    assert AmqpSource.enabled(settings)
