"""Feeds in and sinks out: the edges around the pure core in ``monitor``."""
