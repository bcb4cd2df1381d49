"""Shared fixtures: one embedded stack per test session, fresh topic names per test.

Every test gets its own topic names (a unique prefix), so tests sharing the session's stack never
see each other's records, and two test runs never share a stack at all.
"""

from __future__ import annotations

import dataclasses
import gc
import uuid
from pathlib import Path

import pytest

from survey_kit.cluster import from_stack
from survey_kit.config import Settings, TopicSettings
from survey_kit.stack import EmbeddedStack
from survey_kit.topics import create_topics

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The embedded broker and Schema Registry, on free ports, for the whole test session."""
    with EmbeddedStack(data_dir=tmp_path_factory.mktemp("stack"), services=("broker", "registry")) as running:
        yield running
        # the Avro producers tests let go of live on in a reference cycle (see serde.close_producer): collected
        # here, while the broker still answers, they do not retry it on stderr once the suite has ended
        gc.collect()


def unique_settings(**overrides) -> Settings:
    """Settings whose topic names no other test uses."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    names = {field: f"{prefix}-{default}" for field, default in TopicSettings().model_dump().items()}
    return Settings(topics=TopicSettings(**names), **overrides)


@pytest.fixture
def cluster(stack):
    """A Cluster on the session's stack with this test's own topics, already created."""
    connected = from_stack(stack, unique_settings())
    create_topics(connected)
    return connected


@pytest.fixture
def own_registry(tmp_path):
    """A Schema Registry of the test's own, on a free port: the test may stop it and start it again."""
    with EmbeddedStack(data_dir=tmp_path / "own-registry", services=("registry",)) as running:
        yield running


@pytest.fixture
def registry_cluster(stack, own_registry):
    """Like `cluster`, but through the test's own Schema Registry (`own_registry`)."""
    connected = dataclasses.replace(from_stack(stack, unique_settings()), schema_registry_url=own_registry.schema_registry_url)
    create_topics(connected)
    return connected


@pytest.fixture
def fake():
    """A fake Telegram Bot API server of the test's own, on a free port."""
    from survey_kit.faketelegram import FakeTelegramServer

    with FakeTelegramServer() as server:
        yield server


@pytest.fixture
def tg(fake):
    """A client acting as Telegram users on the test's fake Telegram."""
    from survey_kit.faketelegram import FakeTelegramClient

    with FakeTelegramClient(fake.api_url, timeout=30) as client:
        yield client
