"""The event bus: aiokafka producer and consumers, topic creation, envelope (de)serialization."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from pydantic import BaseModel

from schemas import topics
from schemas.envelope import CloudEvent
from services.settings import Settings

CE_TYPE_HEADER = "ce_type"


class PublishError(RuntimeError):
    """The broker did not acknowledge a write in time; nothing may be acknowledged upstream."""


@dataclass(frozen=True)
class OutgoingRecord:
    topic: str
    key: str
    value: bytes
    ce_type: str


def encode(event: CloudEvent[Any]) -> bytes:
    return event.model_dump_json().encode()


def record_for(topic: str, key: str, event: CloudEvent[BaseModel]) -> OutgoingRecord:
    return OutgoingRecord(topic=topic, key=key, value=encode(event), ce_type=event.type)


async def ensure_topics(settings: Settings, names: Iterable[str] = topics.ALL) -> None:
    """Create the installation's topics if missing (idempotent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [settings.topic(name) for name in names]
        missing = [
            NewTopic(name, num_partitions=settings.topic_partitions, replication_factor=1)
            for name in wanted
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


class Publisher:
    """A producer with acks=all that waits for the broker's acknowledgement of every write."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=False,  # the embedded broker does not support it
            linger_ms=2,
            request_timeout_ms=int(settings.produce_timeout_seconds * 1000),
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish_many(self, records: Iterable[OutgoingRecord]) -> None:
        """Send all records and return once the broker acknowledged every one of them."""
        try:
            async with asyncio.timeout(self._settings.produce_timeout_seconds):
                futures = [
                    await self._producer.send(
                        self._settings.topic(record.topic),
                        value=record.value,
                        key=record.key.encode(),
                        headers=[(CE_TYPE_HEADER, record.ce_type.encode())],
                    )
                    for record in records
                ]
                await asyncio.gather(*futures)
        except (KafkaError, TimeoutError) as exc:
            raise PublishError(f"broker did not acknowledge the write: {exc!r}") from exc

    async def publish(self, record: OutgoingRecord) -> None:
        await self.publish_many([record])

    async def publish_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """Forward a record as it is (used for the DLQ)."""
        try:
            async with asyncio.timeout(self._settings.produce_timeout_seconds):
                await self._producer.send_and_wait(
                    self._settings.topic(topic), value=value, key=key, headers=headers
                )
        except (KafkaError, TimeoutError) as exc:
            raise PublishError(f"broker did not acknowledge the write: {exc!r}") from exc


def make_consumer(settings: Settings, group_id: str, *topic_names: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *(settings.topic(name) for name in topic_names),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.topic_prefix}{group_id}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.consumer_batch_size,
        session_timeout_ms=settings.consumer_session_timeout_ms,
        fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
        heartbeat_interval_ms=max(100, settings.consumer_session_timeout_ms // 10),
    )
