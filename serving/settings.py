"""Every gateway option in one place: a pydantic-settings class read from SCENEPARSE_* variables.

`sceneparse serve` flags override the environment; tests build `Settings(...)` directly.
List options (API keys, CORS origins) are comma-separated in the environment.
"""

from __future__ import annotations

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


class Settings(BaseSettings):
    """The gateway's configuration. Field `x` is read from the variable `SCENEPARSE_X`."""

    model_config = SettingsConfigDict(env_prefix="SCENEPARSE_", extra="ignore")

    # --- where models come from --------------------------------------------------------------
    repository: Path = Field(Path("model_repository"), description="model repository directory")
    backend: Literal["onnxruntime", "triton"] = Field("onnxruntime", description="inference engine")
    default_model: str | None = Field(None, description="model used when a request names none (default: the first)")
    poll_interval: float = Field(10.0, ge=0, description="seconds between repository scans for new versions; 0: only on reload")

    # --- Triton --------------------------------------------------------------------------------
    triton_url: str | None = Field(None, description="host:port of Triton (default: 127.0.0.1:8000 http, :8001 grpc)")
    triton_protocol: Literal["http", "grpc"] = Field("http", description="tritonclient protocol")
    triton_timeout: float = Field(30.0, gt=0, description="seconds for one Triton call")

    # --- ONNX Runtime ------------------------------------------------------------------------
    ort_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when the CUDA provider is present")
    ort_threads: int = Field(0, ge=0, description="intra-op threads per session; 0: the cores this process may use")
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
    queue_size: int = Field(8, ge=0, description="requests allowed to wait for a worker; beyond: 503")
    request_timeout: float = Field(60.0, gt=0, description="deadline of one segment request; beyond: 504")
    retry_after: int = Field(1, ge=0, description="Retry-After seconds sent with a 503")

    # --- security ------------------------------------------------------------------------------
    api_keys: CommaList = Field(default_factory=list, description="keys for every route except /healthz, /readyz")
    admin_keys: CommaList = Field(default_factory=list, description="keys for /v1/admin/* (also valid as API keys)")
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
