"""Every gateway option in one place: a pydantic-settings class read from SCENEPARSE_* variables.

`sceneparse serve` flags override the environment; tests build `Settings(...)` directly.
List options (API keys, CORS origins) are comma-separated in the environment.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MB = 1024 * 1024

# Triton's own defaults: HTTP on 8000, gRPC on 8001.
TRITON_DEFAULT_URLS = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the whole machine)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


CommaList = Annotated[list[str], NoDecode]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach: 127.0.0.0/8, ::1 and `localhost`."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def read_key_file(path: Path, setting: str) -> list[str]:
    """Keys from a secrets file: one per line (commas also separate); blank lines and # comments skipped.

    Raises ValueError naming `setting` when the file cannot be read or holds no key.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.__class__.__name__}") from None
    keys = [item.strip() for line in text.splitlines() if not line.lstrip().startswith("#")
            for item in line.split(",") if item.strip()]
    if not keys:
        raise ValueError(f"{setting}: {path} holds no key")
    return keys


class Settings(BaseSettings):
    """The gateway's configuration. Field `x` is read from the variable `SCENEPARSE_X`."""

    model_config = SettingsConfigDict(env_prefix="SCENEPARSE_", extra="ignore")

    # --- where models come from --------------------------------------------------------------
    repository: Path = Field(Path("model_repository"), description="model repository directory")
    backend: Literal["onnxruntime", "triton"] = Field("onnxruntime", description="inference engine")
    default_model: str | None = Field(None, description="model used when a request names none (default: the first)")
    poll_interval: float = Field(10.0, ge=0, description="seconds between repository scans for new versions; 0: only on reload")
    warmup: bool = Field(True, description="run one inference at the crop size and max batch before a version "
                         "serves (the first request after a reload then costs what the others do)")

    # --- Triton --------------------------------------------------------------------------------
    triton_url: str | None = Field(None, description="host:port of Triton (default: 127.0.0.1:8000 http, :8001 grpc)")
    triton_protocol: Literal["http", "grpc"] = Field("http", description="tritonclient protocol")
    triton_timeout: float = Field(30.0, gt=0, description="seconds for one Triton call")

    # --- ONNX Runtime ------------------------------------------------------------------------
    ort_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when the CUDA provider is present")
    ort_threads: int = Field(0, ge=0, description="intra-op threads per session; 0: the cores this process may use")
    # On: the session keeps one run's activations (one slice of a batch, serving/backends/onnxruntime.py)
    # for its life; off saves that (270 MB for PSPNet-50 at 473) at 14% more latency (docs/serving.md).
    ort_cpu_arena: bool = Field(
        True, description="ONNX Runtime's CPU memory arena (on: keeps one run's activations, faster)")
    malloc_mmap_threshold_mb: int = Field(
        8, ge=0, le=32, description="glibc: allocations from this size on go back to the system when freed "
        "(serving/process_memory.py); 0: glibc's own adjusting threshold")
    gpu_mem_limit_mb: int = Field(3072, ge=256, description="CUDA arena limit of one session (MiB)")
    cuda_device_id: int = Field(0, ge=0, description="GPU index for the CUDA provider")

    # --- HTTP server ---------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="port to bind")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    shutdown_drain_seconds: float = Field(
        0.0, ge=0, description="after SIGTERM, seconds to keep serving with /readyz at 503 before closing"
    )
    graceful_timeout: float = Field(30.0, gt=0, description="seconds in-flight requests get to finish on shutdown")

    # --- request limits ------------------------------------------------------------------------
    max_body_bytes: int = Field(20 * MB, ge=1024, description="largest request body (also when chunked)")
    max_pixels: int = Field(40_000_000, ge=1, description="largest image width*height, checked before decoding")
    max_side: int = Field(1024, ge=32, description="images are downscaled to this long side for inference (never below the model's base_size)")
    max_side_limit: int = Field(2048, ge=32, description="largest max_side a request may ask for")
    max_scales: int = Field(6, ge=1, description="most test scales one request may ask for")
    workers: int = Field(2, ge=1, description="requests processed at once (decode, inference, encode)")
    queue_size: int = Field(8, ge=0, description="requests allowed to wait for a worker, at most; beyond: 503")
    request_timeout: float = Field(60.0, gt=0, description="deadline of one segment request; beyond: 504")
    retry_after: int = Field(1, ge=0, description="Retry-After seconds sent with a 503")
    # Admission by cost (serving/admission.py): a request's cost is the host memory it is estimated
    # to hold at its peak, from the image header and its options, before any pixel is decoded.
    max_request_cost_mb: int = Field(
        4096, ge=1, description="largest estimated working memory of one request (MiB); beyond: 413")
    cost_budget_mb: int = Field(
        8192, ge=1, description="estimated working memory of all admitted requests, running and waiting (MiB); "
        "beyond: 503")
    # Uploads are read before a request takes any worker or queue place; these bound them.
    max_uploads: int = Field(16, ge=1, description="request bodies being received at once; beyond: 503")
    upload_idle_timeout: float = Field(
        10.0, gt=0, description="seconds an upload may send nothing before it is dropped with 408")

    # --- security ------------------------------------------------------------------------------
    # Keys are secrets: never repr'd, never taken from a flag (ps shows flags), read from the
    # environment or from files (docker/compose secrets).
    api_keys: CommaList = Field(default_factory=list, repr=False,
                                description="keys for every route except /healthz, /readyz")
    admin_keys: CommaList = Field(default_factory=list, repr=False,
                                  description="keys for /v1/admin/* (also valid as API keys)")
    api_keys_file: Path | None = Field(None, description="file with API keys, one per line (added to api_keys)")
    admin_keys_file: Path | None = Field(None, description="file with admin keys, one per line (added to admin_keys)")
    allow_anonymous: bool = Field(False, description="serve without keys on a non-loopback address (else refused)")
    cors_origins: CommaList = Field(default_factory=list, description="origins allowed by CORS; empty: closed")

    @field_validator("api_keys", "admin_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.max_side > self.max_side_limit:
            raise ValueError(f"max_side ({self.max_side}) must not exceed max_side_limit ({self.max_side_limit})")
        if self.max_request_cost_mb > self.cost_budget_mb:
            raise ValueError(f"max_request_cost_mb ({self.max_request_cost_mb}) must not exceed cost_budget_mb "
                             f"({self.cost_budget_mb}): such a request could never be admitted")
        return self

    @model_validator(mode="after")
    def _read_key_files(self) -> Settings:
        for field, path in (("api_keys", self.api_keys_file), ("admin_keys", self.admin_keys_file)):
            if path is not None:
                keys = read_key_file(path, f"{field}_file")
                setattr(self, field, [*getattr(self, field), *(k for k in keys if k not in getattr(self, field))])
        return self

    @model_validator(mode="after")
    def _refuse_anonymous_exposure(self) -> Settings:
        # Secure by default: an address others can reach needs keys, or an explicit opt-out.
        if not self.auth_enabled and not self.allow_anonymous and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is reachable from other machines but no API key is set: set "
                "SCENEPARSE_API_KEYS_FILE (--api-key-file) or SCENEPARSE_API_KEYS, or allow anonymous access "
                "explicitly with --allow-anonymous / SCENEPARSE_ALLOW_ANONYMOUS=1")
        return self

    @property
    def resolved_triton_url(self) -> str:
        return self.triton_url or TRITON_DEFAULT_URLS[self.triton_protocol]

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys or self.admin_keys)

    @property
    def intra_op_threads(self) -> int:
        return self.ort_threads or available_cores()
