"""Create the survey topics, idempotently, with the partitions the configuration asks for.

Every topic is created explicitly: the embedded broker would otherwise auto-create a topic with 4
partitions the first time anything produced to it or asked for its metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from .cluster import Cluster


@dataclass(frozen=True)
class TopicReport:
    """What ``create_topics`` found or did for one topic."""

    name: str
    status: str  # "created" or "exists"
    partitions: int
    note: str = ""


def topic_specs(cluster: Cluster) -> dict[str, dict[str, str]]:
    """Each survey topic with the configs it is created with."""
    topics = cluster.topics
    compacted = {"cleanup.policy": "compact"}
    log = {"cleanup.policy": "delete"}
    return {
        topics.entries: log,
        topics.respondents: log,
        topics.responses: log,
        topics.questions: compacted,  # a table: the latest definition of each survey
        topics.results_live: compacted,  # a table: the latest histogram per key
        topics.results_final: log,
    }


def create_topics(cluster: Cluster, timeout: float = 15.0) -> list[TopicReport]:
    """Create the survey topics that do not exist yet and report on all of them."""
    requests = cluster.request_admin()
    admin = requests.client
    try:
        # also what exists already; a broker that refuses connections is reported in seconds, not after the timeout
        existing = requests.metadata(timeout).topics
    except KafkaException as exc:
        raise ConnectionError(f"cannot create topics on {cluster.bootstrap_servers}: {exc.args[0].str()}{requests.reason()}") from None
    partitions = cluster.settings.partitions
    # Replication: one copy on the embedded broker; the cluster's default elsewhere (3 on Confluent Cloud).
    replication = 1 if cluster.embedded else -1
    specs = topic_specs(cluster)
    futures = admin.create_topics(
        [NewTopic(name, partitions, replication, config=config) for name, config in specs.items()],
        request_timeout=timeout,
    )
    reports = []
    for name, future in futures.items():
        try:
            future.result()
            reports.append(TopicReport(name, "created", partitions))
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ConnectionError(f"cannot create topic {name!r} on {cluster.bootstrap_servers}: {error.str()}"
                                      f"{requests.reason()}") from None
            if name not in existing:  # created by someone else since the metadata was read
                existing = admin.list_topics(timeout=timeout).topics
            count = len(existing[name].partitions)
            note = "" if count == partitions else f"has {count} partitions, the configuration says {partitions}"
            reports.append(TopicReport(name, "exists", count, note))
    return reports
