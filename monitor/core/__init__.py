"""The pure core: events in, margin state and alerts out, with no I/O, no clock and no
event loop (the engine, its formulas and transition tables, the configuration's types).
It imports nothing outside ``monitor.core``."""
