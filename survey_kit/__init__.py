"""survey-kit: real-time survey analysis on Apache Kafka, from a Telegram bot to Jupyter notebooks.

The data path: Telegram -> bot -> Kafka (survey-entries) -> ksql pipeline -> result topics ->
pandas frames -> analysis -> live widgets and reports. Start with :func:`survey_kit.cluster.connect`.
"""

__version__ = "0.1.0"
