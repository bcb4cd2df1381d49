"""The Avro schemas of the survey topics, exactly as the talk defines them (namespace ``survey.bot``).

``load_schema("survey-entries")`` returns the schema's JSON text, ready for confluent-kafka's
``AvroSerializer``. The names are the topic names' defaults: survey-entries, survey-respondents,
survey-responses, survey-questions.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

SCHEMA_NAMES = ("survey-entries", "survey-respondents", "survey-responses", "survey-questions")


@cache
def load_schema(name: str) -> str:
    """The Avro schema called ``name`` (one of :data:`SCHEMA_NAMES`) as JSON text."""
    if name not in SCHEMA_NAMES:
        raise KeyError(f"no schema called {name!r}; the schemas are {', '.join(SCHEMA_NAMES)}")
    return resources.files(__name__).joinpath(f"{name}.avsc").read_text()


def field_names(name: str) -> list[str]:
    """The field names of schema ``name``, in order."""
    return [field["name"] for field in json.loads(load_schema(name))["fields"]]
