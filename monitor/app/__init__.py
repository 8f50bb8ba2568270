"""The application: reading ``riskmon.toml``, the composition root (``Monitor``, the
command line) and what it prints. The only part of ``monitor`` that reaches ``adapters``."""
