"""Prometheus instruments, on a registry owned by one app (no global default registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Every instrument the service exports at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "opstwin_http_requests",
            "HTTP requests handled, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "opstwin_http_request_duration_seconds",
            "Time to the response start, by route template.",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )
        self.changelog_head = Gauge(
            "opstwin_changelog_head",
            "Highest sequence number in the change log seen by the feed.",
            registry=self.registry,
        )
        self.feed_subscribers = Gauge(
            "opstwin_feed_subscribers", "Open /subscribe streams.", registry=self.registry
        )
        self.feed_deliveries = Counter(
            "opstwin_feed_deliveries",
            "Change events handed to /subscribe streams (catch-up reads excluded).",
            registry=self.registry,
        )
        self.feed_disconnects = Counter(
            "opstwin_feed_disconnects",
            "Subscribers disconnected by the server, by reason.",
            ["reason"],
            registry=self.registry,
        )
