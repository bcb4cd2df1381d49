"""An embedded, Confluent-compatible Schema Registry for Avro schemas, kept in a SQLite file.

Run it as a process (`python -m survey_kit.registry --port 8081 --data-dir DIR`) or in-process with
`create_app(db_path)`; talk to it with confluent-kafka's `SchemaRegistryClient`, `AvroSerializer` and
`AvroDeserializer`, exactly as to Confluent's own registry.
"""

from .app import create_app

__all__ = ["create_app"]
