"""The synthetic survey workload both engine benchmarks push through the pipeline, so their figures compare."""

from __future__ import annotations

import random

OPTIONS = ["Pumpkin Pie", "Pecan Pie", "Apple Pie", "Thanksgiving Leftover Pot Pie", "Other"]
SURVEYS = 20
DISTINCT_ENTRIES = 5_000  # a pool cycled through: encoding every entry anew would dominate set-up time


def entry_pool() -> list[dict]:
    """Distinct survey entries (the talk's schema) spread over SURVEYS surveys, always the same ones."""
    rng = random.Random(7)
    return [
        {"survey_id": str(user % SURVEYS), "user_id": str(user), "name": f"Respondent {user}",
         "company": rng.choice([None, "Acme", "Initech"]), "location": rng.choice([None, "Lisbon", "Austin"]),
         "response": rng.choice(OPTIONS)}
        for user in range(DISTINCT_ENTRIES)
    ]


def question(survey: int) -> dict:
    """The definition of survey number ``survey`` (the talk's survey-questions schema)."""
    return {"survey_id": str(survey), "question": f"Question {survey}?", "summary": f"Q{survey}",
            "options": OPTIONS, "enabled": True}
