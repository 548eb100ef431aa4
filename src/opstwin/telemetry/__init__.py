"""Telemetry: normalisation, ingest, sources, time-series queries and anomaly detection."""
