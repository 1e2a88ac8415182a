"""The AMQP source: file-ready messages from a broker queue (RabbitMQ), as JUNO's KUP gets them.

A message is acknowledged only after its receipt is committed, so the broker keeps every
message the database has not: a crash before the ack means redelivery, which ``receive``
turns into a DUPLICATE no-op. A malformed message is committed as REJECTED and then acked:
it is kept in the database with its reason, and redelivering it would not mend it. A
database error nacks the message back onto the queue and backs off, so nothing is lost
while the database is away. A lost broker is reconnected to with backoff.

pika's BlockingConnection is not thread-safe, so one thread owns the connection and does
everything on it; ``stop()`` only sets an event that the thread sees within a fraction of
a second (``process_data_events`` with a short time limit).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

import pika
import pika.channel
import pika.spec

from runwatch.config import Settings
from runwatch.db import Database, utcnow
from runwatch.ingest.service import receive

log = logging.getLogger(__name__)

SOURCE = "amqp"
PREFETCH = 20
POLL_SECONDS = 0.2
CONNECT_TIMEOUT_SECONDS = 5.0
BACKOFF_MIN_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0


class Backoff:
    """A delay that doubles on each failure up to a cap, and resets on success."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = first, cap
        self.current = first

    def next(self) -> float:
        delay = self.current
        self.current = min(self.current * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.current = self.first


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def connection_parameters(url: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    if "socket_timeout" not in url:
        # pika's default waits 10 s on a broker that does not answer; stop() should not.
        params.socket_timeout = CONNECT_TIMEOUT_SECONDS
    return params


class AmqpSource:
    """Consumes ``ingest.amqp_queue`` on the broker at ``ingest.amqp_url``."""

    name = SOURCE

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return bool(settings.ingest.amqp_url)

    def __init__(self, settings: Settings, db: Database) -> None:
        self.url = settings.ingest.amqp_url
        self.queue = settings.ingest.amqp_queue
        self.db = db
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake: Callable[[], None] = lambda: None
        self._reconnect = Backoff(BACKOFF_MIN_SECONDS, BACKOFF_MAX_SECONDS)
        self._database = Backoff(BACKOFF_MIN_SECONDS, BACKOFF_MAX_SECONDS)

    def start(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="amqp", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except Exception as exc:  # broker gone, refused, or a bug: never die silently
                delay = self._reconnect.next()
                log.warning("AMQP %s: %s; reconnecting in %.1f s", redacted(self.url), exc, delay)
                self._stop.wait(delay)

    def _consume(self) -> None:
        connection = pika.BlockingConnection(connection_parameters(self.url))
        try:
            channel = connection.channel()
            channel.queue_declare(queue=self.queue, durable=True)
            channel.basic_qos(prefetch_count=PREFETCH)
            channel.basic_consume(self.queue, self._on_message)
            self._reconnect.reset()
            log.info("consuming AMQP queue %s at %s", self.queue, redacted(self.url))
            while not self._stop.is_set():
                connection.process_data_events(time_limit=POLL_SECONDS)
        finally:
            # Closing returns unacked deliveries to the queue.
            if connection.is_open:
                with contextlib.suppress(Exception):
                    connection.close()

    def _on_message(
        self,
        channel: pika.channel.Channel,
        method: pika.spec.Basic.Deliver,
        properties: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        origin = _origin(self.queue, properties)
        try:
            with self.db.session() as session:
                receipt = receive(session, body, SOURCE, origin, utcnow())
        except Exception:
            delay = self._database.next()
            log.exception("AMQP message not stored; requeued, pausing %.1f s", delay)
            channel.basic_nack(delivery_tag=method.delivery_tag, requeue=True)
            self._stop.wait(delay)
            return
        self._database.reset()
        channel.basic_ack(delivery_tag=method.delivery_tag)
        log.debug("AMQP message %d %s", receipt.message_id, receipt.status.value)
        self._wake()


def _origin(queue: str, properties: Any) -> str:
    message_id = getattr(properties, "message_id", None)
    return f"{queue} message {message_id}" if message_id else queue
