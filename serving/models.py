"""The loaded models: which version of each model serves, and swapping versions without failing requests.

`refresh()` scans the repository (serving/repository_scan.py: a bad entry is skipped and reported
for itself alone) and compares each model's served version (pinned, else newest) with the loaded
one. A new version is opened and warmed up (one inference at its crop size and largest batch, so the
first request after a swap does not pay ONNX Runtime's first-run allocations) *before* it is
swapped in; on a backend that loads models itself (Triton), it is swapped in only once the backend
reports that version ready, and until then the old version keeps serving. A request takes a lease
on the version current when it arrived and keeps it until its work is done; a replaced version is
closed only when its last lease is returned. A version that fails to load is reported and the old
one keeps serving; so does a model whose entry turned bad.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from serving.backends.base import Backend, ModelRunner
from serving.pipeline import PipelineSpec
from serving.repository import ModelMetadata, ModelNotFoundError, ModelRepository, RepositoryError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedModel:
    """One open model version and the number of requests using it."""

    meta: ModelMetadata
    runner: ModelRunner
    spec: PipelineSpec
    loaded_at: float = field(default_factory=time.time)
    leases: int = 0
    retired: bool = False
    closed: bool = False

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def version(self) -> int:
        return self.meta.version


@dataclass
class RefreshReport:
    """What one refresh did: model -> served version, the changes, the failures, the skipped
    repository entries and the versions waiting for the backend to report them ready."""

    served: dict[str, int] = field(default_factory=dict)
    changed: dict[str, list[int | None]] = field(default_factory=dict)  # name -> [old, new]
    errors: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # repository entry -> its problems
    pending: dict[str, int] = field(default_factory=dict)  # name -> version not ready on the backend yet

    def to_dict(self) -> dict:
        return {"served": self.served, "changed": self.changed, "errors": self.errors, "skipped": self.skipped,
                "pending": self.pending}


class ModelManager:
    """Holds one `LoadedModel` per model name; thread-safe."""

    def __init__(self, repository: ModelRepository, backend: Backend, default_model: str | None = None,
                 warmup: bool = True):
        self.repository = repository
        self.backend = backend
        self.default_model = default_model
        self.warmup = warmup
        self.last_errors: dict[str, str] = {}
        self.last_skipped: dict[str, list[str]] = {}
        self.last_pending: dict[str, int] = {}
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()  # guards _models and every lease count
        self._refresh_lock = threading.Lock()  # one refresh at a time

    # --- reading -----------------------------------------------------------------------------
    def loaded(self) -> list[LoadedModel]:
        """The serving versions, sorted by model name."""
        with self._lock:
            return [self._models[name] for name in sorted(self._models)]

    def default_name(self) -> str | None:
        """The model used when a request names none: the configured one if served, else the first."""
        with self._lock:
            return self._default_locked()

    def _default_locked(self) -> str | None:
        if self.default_model and self.default_model in self._models:
            return self.default_model
        return min(self._models, default=None)

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            if name not in self._models:
                raise ModelNotFoundError(f"model {name!r} is not served; served: {sorted(self._models) or 'none'}")
            return self._models[name]

    # --- leases ------------------------------------------------------------------------------
    def acquire(self, name: str | None = None) -> LoadedModel:
        """Take a lease on the current version of `name` (default model when None)."""
        with self._lock:
            if name is None:
                name = self._default_locked()
                if name is None:
                    raise ModelNotFoundError("no model is loaded yet")
            entry = self._models.get(name)
            if entry is None:
                raise ModelNotFoundError(f"model {name!r} is not served; served: {sorted(self._models) or 'none'}")
            entry.leases += 1
            return entry

    def release(self, entry: LoadedModel) -> None:
        """Return a lease; closes a replaced version when its last lease comes back."""
        with self._lock:
            entry.leases -= 1
            close = entry.retired and entry.leases == 0 and not entry.closed
            entry.closed = entry.closed or close
        if close:
            self._close(entry)

    @contextlib.contextmanager
    def lease(self, name: str | None = None) -> Iterator[LoadedModel]:
        entry = self.acquire(name)
        try:
            yield entry
        finally:
            self.release(entry)

    # --- loading -----------------------------------------------------------------------------
    def refresh(self) -> RefreshReport:
        """Bring every model to its served version; returns what changed, failed, was skipped or waits."""
        with self._refresh_lock:
            report = RefreshReport()
            try:
                scan = self.repository.scan()
            except RepositoryError as exc:
                # Keep serving what is loaded: a vanished mount is more likely than a deliberate purge.
                report.errors["*"] = str(exc)
                self.last_errors = report.errors  # the entries' problems are as last seen
                return report
            report.skipped = scan.problems
            for name, model in scan.models.items():
                try:
                    self._refresh_one(model.metadata[model.served], report)
                except Exception as exc:  # one broken model must not stop the others
                    report.errors[name] = f"{type(exc).__name__}: {exc}"
                    log.error("cannot load model %s v%d: %s", name, model.served, exc)
            # A model whose entry is bad keeps its loaded version; one that is gone is unloaded.
            keep = set(scan.models) | set(scan.problems)
            with self._lock:
                gone = [self._models.pop(name) for name in list(self._models) if name not in keep]
            for entry in gone:
                report.changed[entry.name] = [entry.version, None]
                self._retire(entry)
            report.served = {entry.name: entry.version for entry in self.loaded()}
            self._remember(report)
            return report

    def _refresh_one(self, meta: ModelMetadata, report: RefreshReport) -> None:
        name, version = meta.name, meta.version
        with self._lock:
            current = self._models.get(name)
        if current is not None and current.version == version:
            return
        if current is not None and not self.backend.model_ready(meta):
            # Triton loads versions itself (a load request, or its poll): switching before it has
            # this one ready would turn every request into a 503. The next refresh looks again.
            report.pending[name] = version
            return
        runner = self.backend.open(self.repository, meta)
        try:
            if self.warmup:
                started = time.perf_counter()
                runner.warm_up()
                log.info("warmed up %s v%d in %.2f s", name, version, time.perf_counter() - started)
        except BaseException:
            runner.close()
            raise
        entry = LoadedModel(meta=meta, runner=runner, spec=PipelineSpec.from_metadata(meta))
        with self._lock:
            old = self._models.get(name)
            self._models[name] = entry
        report.changed[name] = [old.version if old else None, version]
        log.info("serving %s v%d (was %s)", name, version, f"v{old.version}" if old else "not loaded")
        if old is not None:
            self._retire(old)

    def _remember(self, report: RefreshReport) -> None:
        """Keep the report's problems for /v1/admin/status; log each one when it appears or goes away
        (not at every poll)."""
        for entry, problems in report.skipped.items():
            for problem in problems:
                if problem not in self.last_skipped.get(entry, []):
                    log.warning("model repository: %s", problem)
        for entry in self.last_skipped.keys() - report.skipped.keys():
            log.info("model repository: %s is no longer skipped", entry)
        for name, version in report.pending.items():
            if self.last_pending.get(name) != version:
                log.info("%s v%d is published but not ready on the %s backend yet; the loaded version keeps "
                         "serving", name, version, self.backend.kind)
        self.last_errors, self.last_skipped, self.last_pending = report.errors, report.skipped, report.pending

    def _retire(self, entry: LoadedModel) -> None:
        with self._lock:
            entry.retired = True
            close = entry.leases == 0 and not entry.closed
            entry.closed = entry.closed or close
        if close:
            self._close(entry)

    @staticmethod
    def _close(entry: LoadedModel) -> None:
        try:
            entry.runner.close()
        except Exception as exc:
            log.warning("closing %s v%d failed: %s", entry.name, entry.version, exc)

    def close(self) -> None:
        """Retire every model; each closes when its last request finishes."""
        with self._lock:
            entries = list(self._models.values())
            self._models.clear()
        for entry in entries:
            self._retire(entry)
