"""The gateway's long-lived objects, built once per app in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from serving.admission import UploadSlots
from serving.backends.base import Backend
from serving.metrics import GatewayMetrics
from serving.models import ModelManager, RefreshReport
from serving.settings import Settings
from serving.workers import WorkerPool

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """Settings, backend, loaded models, worker pool, upload slots and metrics of one running app."""

    settings: Settings
    backend: Backend
    manager: ModelManager
    pool: WorkerPool
    metrics: GatewayMetrics
    uploads: UploadSlots = field(default=None)  # type: ignore[assignment]
    _pending_watch: asyncio.Task | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.uploads is None:
            self.uploads = UploadSlots(self.settings.max_uploads, self.metrics)

    async def refresh(self) -> RefreshReport:
        """Pick up new, pinned or removed versions (loading runs on a thread); updates the metrics.

        A version the backend does not report ready yet (Triton still loading it) is looked at again
        soon, not only at the next poll (`_watch_pending`).
        """
        report = await asyncio.to_thread(self.manager.refresh)
        self._record(report)
        if report.pending and (self._pending_watch is None or self._pending_watch.done()):
            self._pending_watch = asyncio.create_task(self._watch_pending())
        return report

    def _record(self, report: RefreshReport) -> None:
        for name, (_, new) in report.changed.items():
            self.metrics.reloads.labels(name, "loaded" if new is not None else "removed").inc()
            if new is None:
                with contextlib.suppress(KeyError):  # never served: nothing to remove
                    self.metrics.model_version.remove(name)
        for name in report.errors:
            self.metrics.reloads.labels(name, "failed").inc()
        for name, version in report.served.items():
            self.metrics.model_version.labels(name).set(version)
        self.metrics.skipped_entries.set(sum(len(problems) for problems in report.skipped.values()))
        self.metrics.pending_versions.set(len(report.pending))

    async def _watch_pending(self) -> None:
        """Refresh again, 0.5 s then backing off to `poll_interval` (10 s at most), until no version waits
        for the backend; also when polling is off (a reload then a Triton load request in either order)."""
        delay = 0.5
        ceiling = min(self.settings.poll_interval or 10.0, 10.0)
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(ceiling, 0.5))
            try:
                report = await asyncio.to_thread(self.manager.refresh)
            except Exception as exc:  # keep watching: the next scan may work
                log.error("model repository scan failed: %s", exc)
                continue
            self._record(report)
            if not report.pending:
                return

    async def poll(self) -> None:
        """Refresh every `poll_interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            try:
                await self.refresh()
            except Exception as exc:  # the poller must outlive any one bad scan
                log.error("model repository scan failed: %s", exc)

    async def readiness(self) -> tuple[bool, str]:
        """(ready, reason): the backend is live and at least one loaded model is ready on it.

        The reason is public (/readyz): it names no path, host or library message; `details()`
        has those, for admins.
        """
        loaded = self.manager.loaded()
        if not loaded:
            failed, skipped = len(self.manager.last_errors), len(self.manager.last_skipped)
            why = [f"{failed} failed to load"] if failed else []
            why += [f"{skipped} repository entries skipped"] if skipped else []
            return False, "no model is loaded" + (f" ({', '.join(why)}; see the log)" if why else "")
        if not await asyncio.to_thread(self.backend.live):
            return False, f"the {self.backend.kind} backend is not reachable"
        for entry in loaded:
            if await asyncio.to_thread(self.backend.model_ready, entry.meta):
                return True, "ready"
        return False, f"no model is ready on the {self.backend.kind} backend"

    async def details(self) -> dict[str, Any]:
        """What an operator needs to diagnose (admin only): readiness, load errors in full, the
        backend's address, and the admission figures."""
        ready, reason = await self.readiness()
        settings = self.settings
        return {
            "ready": ready,
            "reason": reason,
            "backend": {"kind": self.backend.kind,
                        "url": settings.resolved_triton_url if settings.backend == "triton" else None},
            "repository": str(settings.repository),
            "models": {entry.name: {"version": entry.version, "leases": entry.leases}
                       for entry in self.manager.loaded()},
            "load_errors": dict(self.manager.last_errors),
            # Bad repository entries, each skipped on its own (serving/repository_scan.py), and
            # versions published but not ready on the backend yet (the loaded one keeps serving).
            "skipped_entries": dict(self.manager.last_skipped),
            "pending_versions": dict(self.manager.last_pending),
            "admission": {"admitted": self.pool.admitted, "admitted_cost_bytes": self.pool.admitted_cost,
                          "cost_budget_bytes": self.pool.budget, "uploads": self.uploads.active,
                          "max_uploads": self.uploads.limit},
        }

    async def stop_watching(self) -> None:
        """Cancel the watch over pending versions (on the event loop, before `close`)."""
        if self._pending_watch is not None:
            self._pending_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pending_watch

    def close(self) -> None:
        self.pool.shutdown()
        self.manager.close()
        self.backend.close()
