"""Metrics (multiprocess), the access log, readiness checks and the probe endpoints."""
