"""riskmon: a streaming margin risk monitor.

``monitor`` holds the pure core (instruments, events, the margin engine, level and rule
transitions) and the asyncio pipeline around it. It never imports ``adapters`` except in the
composition root, :mod:`monitor.app.cli`.
"""

__version__ = "0.1.0"
