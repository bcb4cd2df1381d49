"""The Telegram survey bot: a conversation that turns answers into survey-entries records, durable delivery
to Kafka, live results, final-results alerts, and a runner for notebooks.

    from survey_kit.bot import BotRunner
    runner = BotRunner().start()     # in a background thread; also inside a Jupyter kernel
    runner.status()
    runner.stop()
"""
