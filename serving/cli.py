"""`sceneparse serve`: run the gateway under uvicorn.

Every flag has a SCENEPARSE_* environment variable (see serving/settings.py); a flag wins over
the variable. SIGTERM (or Ctrl-C) turns /readyz to 503, optionally keeps serving for
`shutdown_drain_seconds` so load balancers notice, lets in-flight requests finish (up to
`graceful_timeout`), then exits 0.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from types import FrameType

import uvicorn
from pydantic import ValidationError

from serving.backends.factory import create_backend
from serving.main import create_app
from serving.process_memory import set_mmap_threshold
from serving.settings import Settings


class GatewayServer(uvicorn.Server):
    """uvicorn's server with a readiness flag flipped on the first shutdown signal."""

    def __init__(self, config: uvicorn.Config, drain_seconds: float = 0.0):
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not calling super(): it records the signal and re-raises it after shutdown, which would
        # turn a clean, graceful exit into death by SIGTERM (exit status 143).
        app_state = getattr(self.config.app, "state", None)
        if app_state is not None:
            app_state.draining = True
        if self._draining:  # a second signal: stop waiting for the drain or for slow requests
            self.should_exit = True
            self.force_exit = True
            return
        self._draining = True
        if self.drain_seconds > 0:
            timer = threading.Timer(self.drain_seconds, lambda: setattr(self, "should_exit", True))
            timer.daemon = True
            timer.start()
        else:
            self.should_exit = True


class _RefuseSecretFlag(argparse.Action):
    """`--api-key VALUE` / `--admin-key VALUE`: refused without echoing the value (`ps`, shell
    history and logs would keep it); the message says where keys go instead."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"sceneparse serve: {option_string} is not accepted: a key on the command line is visible to "
              f"every user in `ps`. Put the key in a file and pass {option_string}-file FILE, or set "
              f"SCENEPARSE_{self.dest.upper()}S", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # else `--api-key SECRET` would be taken for `--api-key-file SECRET`
        prog="sceneparse serve",
        description="Serve the models of a model repository over HTTP (web page at /, API docs at /docs).",
        epilog="Every option can also be set as SCENEPARSE_<OPTION> in the environment (e.g. SCENEPARSE_PORT).",
    )
    parser.add_argument("--repository", help="model repository directory (default: model_repository)")
    parser.add_argument("--backend", choices=["onnxruntime", "triton"], help="inference engine (default: onnxruntime)")
    parser.add_argument("--triton-url", help="Triton host:port (default: 127.0.0.1:8000 for http, :8001 for grpc)")
    parser.add_argument("--triton-protocol", choices=["http", "grpc"], help="Triton protocol (default: http)")
    parser.add_argument("--host", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default: 8000)")
    parser.add_argument("--workers", type=int, help="requests processed at once (default: 2)")
    parser.add_argument("--poll-interval", type=float, help="seconds between repository scans; 0: off (default: 10)")
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    # Keys are never flags' values (every user sees a command line in `ps`): a file or the environment.
    keys = parser.add_argument_group(
        "access", "API keys are read from files or from SCENEPARSE_API_KEYS / SCENEPARSE_ADMIN_KEYS, "
        "never from the command line. Binding an address other than loopback needs a key, or --allow-anonymous.")
    keys.add_argument("--api-key-file", metavar="FILE", help="file with API keys, one per line")
    keys.add_argument("--admin-key-file", metavar="FILE", help="file with admin keys (for /v1/admin/*), one per line")
    for flag in ("--api-key", "--admin-key"):
        keys.add_argument(flag, action=_RefuseSecretFlag, nargs="?", help=argparse.SUPPRESS)
    keys.add_argument("--allow-anonymous", action="store_true", default=None,
                      help="serve without any key even on a non-loopback address")
    limits = parser.add_argument_group("limits", "see docs/security.md for every limit and its default")
    limits.add_argument("--max-request-cost-mb", type=int, help="largest estimated working memory of one request "
                        "(default: 4096)")
    limits.add_argument("--cost-budget-mb", type=int, help="estimated working memory of all admitted requests "
                        "(default: 8192)")
    limits.add_argument("--max-uploads", type=int, help="request bodies received at once (default: 16)")
    return parser


def _settings_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        if not key:  # a check across settings: its message names them
            problems.append(message)
            continue
        problems.append(f"{key} (--{key.replace('_', '-')} / SCENEPARSE_{key.upper()}): {message}")
    return "; ".join(problems)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build the settings and the backend, serve until a shutdown signal; returns the exit code."""
    args = build_parser().parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"sceneparse serve: invalid setting: {_settings_error(exc)}", file=sys.stderr)
        return 2
    if not settings.repository.is_dir():
        print(f"sceneparse serve: model repository {settings.repository} is not a directory "
              "(export a model first, or run `make serve` for the demo model)", file=sys.stderr)
        return 2
    try:
        backend = create_backend(settings)
    except (RuntimeError, ValueError, ImportError) as exc:
        print(f"sceneparse serve: cannot start the {settings.backend} backend: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.malloc_mmap_threshold_mb:
        set_mmap_threshold(settings.malloc_mmap_threshold_mb * 1024 * 1024)
    app = create_app(settings, backend)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.graceful_timeout),
        lifespan="on",
    )
    server = GatewayServer(config, drain_seconds=settings.shutdown_drain_seconds)
    try:
        server.run()
    except KeyboardInterrupt:
        return 130
    # uvicorn returns without starting when the port is taken or the lifespan fails.
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
