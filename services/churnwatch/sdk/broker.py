"""
Low-level requests to the broker through kafka-python's public KafkaClient.

KafkaAdminClient.list_topics() and describe_topics() ask for the ACL operations a client may
perform and crash on the values Tansu answers with, so topic metadata is requested here with
those fields off; the same client asks whether the broker grants idempotent producer ids.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kafka.errors
from kafka import KafkaClient
from kafka.protocol.init_producer_id import InitProducerIdRequest
from kafka.protocol.metadata import MetadataRequest

from churnwatch.core.errors import ChurnwatchError
from churnwatch.sdk.settings import KafkaSettings

log = logging.getLogger(__name__)


class BrokerUnavailableError(ChurnwatchError):
    """The broker did not answer (or refused the connection). Retry, then give up."""


@contextmanager
def broker_client(settings: KafkaSettings) -> Iterator[Any]:
    """
    A connected kafka-python KafkaClient, closed on exit.

    Raises:
        BrokerUnavailableError: when no bootstrap server answers.
    """
    try:
        client = KafkaClient(**settings.kafka_kwargs())
    except kafka.errors.KafkaError as exc:
        msg = f"no Kafka broker answered at {settings.bootstrap}: {exc!r}"
        raise BrokerUnavailableError(msg) from exc
    try:
        yield client
    finally:
        client.close()


def send(client: Any, settings: KafkaSettings, request: Any) -> Any:
    """
    Sends one request to the least loaded broker and returns its response.
    """
    node = client.least_loaded_node()
    try:
        if node is None or not client.await_ready(node, timeout_ms=settings.request_timeout_ms):
            msg = (
                f"no Kafka broker at {settings.bootstrap} became ready for {type(request).__name__}"
            )
            raise BrokerUnavailableError(msg)
        return client.send_and_receive(node, request)
    except kafka.errors.KafkaError as exc:
        msg = f"{type(request).__name__} to {settings.bootstrap} failed: {exc!r}"
        raise BrokerUnavailableError(msg) from exc


def topic_metadata(settings: KafkaSettings, topics: list[str]) -> list[dict[str, Any]]:
    """
    The metadata of the named topics (never creates them): one dict per topic with
    `topic`, `error_code` and `partitions`.
    """
    with broker_client(settings) as client:
        version = client.api_version(MetadataRequest, max_version=8)
        fields: dict[str, Any] = {"topics": topics}
        if version >= 4:
            fields["allow_auto_topic_creation"] = False
        if version >= 8:
            # The ACL fields are what crash KafkaAdminClient against Tansu; we don't need them.
            fields["include_cluster_authorized_operations"] = False
            fields["include_topic_authorized_operations"] = False
        response = send(client, settings, MetadataRequest[version](**fields))
        described: list[dict[str, Any]] = response.to_object()["topics"]
        return described


def grants_producer_id(settings: KafkaSettings) -> tuple[bool, str]:
    """
    Whether the broker hands out idempotent producer ids (InitProducerId without a transaction).

    Returns:
        (True, "") when it does; (False, the broker's error) when it does not. Tansu 0.6
        answers UnknownError, and an idempotent kafka-python producer then fails every send.
    """
    with broker_client(settings) as client:
        try:
            version = client.api_version(InitProducerIdRequest, max_version=1)
        except kafka.errors.IncompatibleBrokerVersion as exc:
            return False, f"the broker does not support InitProducerId: {exc}"
        request = InitProducerIdRequest[version](
            transactional_id=None, transaction_timeout_ms=60_000
        )
        response = send(client, settings, request)
        error = kafka.errors.for_code(response.error_code)
        if error is kafka.errors.NoError:
            return True, ""
        return False, f"InitProducerId answered {error.__name__} (error code {response.error_code})"
