"""The embedded stack: Kafka, Schema Registry and friends on one machine, started by one command.

``EmbeddedStack`` is the context manager for notebooks and tests; ``up`` / ``down`` /
``running_stack`` manage the one stack that ``survey-kit up`` leaves running.
"""

from .embedded import EmbeddedStack
from .processes import StackError
from .state import down, running_stack, state_file, up

__all__ = ["EmbeddedStack", "StackError", "down", "running_stack", "state_file", "up"]
