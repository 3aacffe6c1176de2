"""Throughput benchmark of the activity collector: `python -m bench` (see bench/README.md)."""
