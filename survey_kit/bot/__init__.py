"""The Telegram survey bot: a conversation that turns answers into survey-entries records, durable delivery
to Kafka, live results, final-results alerts, and a runner for notebooks.

    from survey_kit.bot import BotRunner, simulate
    runner = BotRunner().start()     # in a background thread; also inside a Jupyter kernel
    simulate(runner.api_url, respondents=50)   # with the stack's fake Telegram
    runner.status()
    runner.stop()

Modules, along the data path:
    texts         what the bot says
    prompts       asking, and asking again after an unusable answer
    conversation  /survey: name -> company -> location -> answer -> /y
    admin         /newsurvey and /closesurvey for the admin chats
    commands      /start /help /results /subscribe /unsubscribe and the catch-alls
    app           the python-telegram-bot Application, and running it in a thread
    ordering      each chat's updates one at a time, in order; chats concurrently
    services      what the handlers use (catalog, ledger, deliver, ...), wired by runner
    follow        keeping an in-memory table from a topic
    catalog       the surveys, from survey-questions
    ledger        who answered what, from survey-entries
    outbox        confirmed entries on disk until Kafka acknowledged them
    delivery      the one idempotent producer delivering the outbox
    results       result records -> text bars (/results)
    alerts        survey-results-final -> subscribers and admins, once per window
    subscribers   who asked for final results
    ratelimit     Telegram's 429 retry_after honoured
    runner        all of it together: BotRunner
    simulate      simulated respondents through the fake Telegram
    generator     entries straight to Kafka with chosen timestamps
    cli           survey-kit bot / simulate / generate
"""

from .runner import BotRunner
from .simulate import simulate

__all__ = ["BotRunner", "simulate"]
