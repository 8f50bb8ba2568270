"""The asyncio runtime around the core: the feed interface and inbox, the pipeline and
its sinks' tasks, the daemon loop, the alert hub, health and metrics, and the venue
interface. It imports the core, never the application."""
