"""Prometheus metrics of one gateway (a registry per app, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

STAGES = ("decode", "preprocess", "inference", "stitch", "encode")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TILE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class GatewayMetrics:
    """Counters, gauges and histograms exposed at /metrics."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sceneparse_http_requests", "HTTP requests by route template, method and status code.",
            ["route", "method", "status"], registry=self.registry,
        )
        self.request_seconds = Histogram(
            "sceneparse_http_request_duration_seconds", "Wall time of HTTP requests by route template.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "sceneparse_stage_duration_seconds", "Seconds per segment request spent in each stage.",
            ["stage"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.tiles = Histogram(
            "sceneparse_tiles_per_request", "Sliding-window crops (flips included) run for one request.",
            buckets=_TILE_BUCKETS, registry=self.registry,
        )
        self.queue_depth = Gauge(
            "sceneparse_queue_depth", "Segment requests waiting for a worker.", registry=self.registry,
        )
        self.in_progress = Gauge(
            "sceneparse_requests_in_progress", "Segment requests being processed by a worker.", registry=self.registry,
        )
        self.admitted_cost = Gauge(
            "sceneparse_admitted_cost_bytes", "Estimated working memory of the admitted segment requests.",
            registry=self.registry,
        )
        self.uploads = Gauge(
            "sceneparse_uploads_in_progress", "Request bodies being received.", registry=self.registry,
        )
        self.rejected = Counter(
            "sceneparse_rejected_requests", "Segment requests refused or dropped, by reason.",
            ["reason"], registry=self.registry,
        )
        self.model_version = Gauge(
            "sceneparse_model_version", "The version each model serves.", ["model"], registry=self.registry,
        )
        self.reloads = Counter(
            "sceneparse_model_reloads", "Model version changes and load failures.", ["model", "result"],
            registry=self.registry,
        )
        self.skipped_entries = Gauge(
            "sceneparse_repository_skipped_entries",
            "Model repository entries skipped at the last scan (bad name, symlink out, half-written, unreadable).",
            registry=self.registry,
        )
        self.pending_versions = Gauge(
            "sceneparse_pending_versions", "Published versions waiting for the backend to report them ready.",
            registry=self.registry,
        )
        for stage in STAGES:  # so every stage shows up before the first request
            self.stage_seconds.labels(stage)

    def observe_stages(self, seconds: dict[str, float]) -> None:
        for stage, value in seconds.items():
            self.stage_seconds.labels(stage).observe(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
