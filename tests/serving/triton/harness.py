"""A real tritonserver for the tests: the binary from the nvidia-pytriton wheel, on free ports.

That binary has only the python backend, so the harness serves a *mirror* of a sceneparse model
repository: for every model and version it writes

    <harness>/<name>/config.pbtxt      export's config.pbtxt, re-targeted to backend "python"
                                       (same tensors, dims, max_batch_size, dynamic_batching,
                                       version_policy; instances on KIND_CPU)
    <harness>/<name>/<version>/*       links to that version's files (the same model.onnx)
    <harness>/<name>/<version>/model.py   onnx_python_model.py: runs model.onnx with onnxruntime

The production config.pbtxt is only read, never changed. `sync()` mirrors versions published
after the start (then `serving.backends.triton.load_model` makes Triton serve them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serving.repository import CONFIG_FILE, METADATA_FILE, ModelRepository

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DIST = REPO_ROOT / ".cache" / "pytriton"
MODEL_TEMPLATE = Path(__file__).with_name("onnx_python_model.py")
# Files of a model directory that are links to the source (config.pbtxt is rewritten instead).
MODEL_LEVEL_FILES = ("labels.txt", "colors.txt", "deployment.json")


class TritonHarnessError(RuntimeError):
    """tritonserver could not be found, started or made ready; the message holds its log tail."""


def pytriton_dist() -> Path:
    """Where scripts/fetch_tritonserver.sh unpacked the wheel (env SCENEPARSE_PYTRITON_DIR overrides)."""
    return Path(os.environ.get("SCENEPARSE_PYTRITON_DIR", DEFAULT_DIST))


def tritonserver_binary(dist: Path | None = None) -> Path:
    return (dist or pytriton_dist()) / "pytriton" / "tritonserver" / "bin" / "tritonserver"


def parse_model_config(path: Path) -> model_config_pb2.ModelConfig:
    """Parse a config.pbtxt with Triton's own protobuf schema; errors name the file."""
    try:
        return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise TritonHarnessError(f"{path}: not a valid Triton model config: {exc}") from exc


def python_backend_config(production: model_config_pb2.ModelConfig, name: str) -> str:
    """The harness config.pbtxt: export's config with the python backend instead of onnxruntime."""
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(production)
    config.name = name
    config.ClearField("platform")
    config.backend = "python"
    config.ClearField("default_model_filename")
    # Accelerator settings belong to the onnxruntime backend; instances run on the CPU here.
    config.ClearField("optimization")
    del config.instance_group[:]
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=1)
    return text_format.MessageToString(config)


def mirror_repository(source: ModelRepository, target: Path) -> list[str]:
    """Make `target` a python-backend mirror of `source` (idempotent; adds and drops versions).

    Returns the names of the mirrored models.
    """
    target.mkdir(parents=True, exist_ok=True)
    names = source.list_models()
    for name in names:
        model_dir = source.model_dir(name)
        mirror = target / name
        mirror.mkdir(exist_ok=True)
        production = parse_model_config(model_dir / CONFIG_FILE)
        _write_if_changed(mirror / CONFIG_FILE, python_backend_config(production, name))
        for file_name in MODEL_LEVEL_FILES:
            _link(model_dir / file_name, mirror / file_name)
        versions = {str(v) for v in source.list_versions(name)}
        for child in mirror.iterdir():
            if child.is_dir() and child.name.isdigit() and child.name not in versions:
                shutil.rmtree(child)
        for version in sorted(versions, key=int):
            _mirror_version(model_dir / version, mirror / version)
    return names


def _mirror_version(source: Path, mirror: Path) -> None:
    if (mirror / METADATA_FILE).exists():
        return
    staging = mirror.with_name(f".tmp-{mirror.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for child in source.iterdir():
        _link(child, staging / child.name)
    shutil.copyfile(MODEL_TEMPLATE, staging / "model.py")
    # Complete before Triton can see it, as with publish_version.
    os.rename(staging, mirror)


def _link(source: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        if not source.exists():
            link.unlink()
        return
    if source.exists():
        link.symlink_to(source.resolve())


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TritonServer:
    """One tritonserver process over a python-backend mirror of `source`.

    `start()` waits until Triton reports ready (all models loaded) or raises TritonHarnessError
    with the log tail; `kill()` simulates a crash; `start()` again reuses the same ports; `stop()`
    terminates it and its python stubs (one process group).
    """

    def __init__(
        self,
        source: ModelRepository,
        workdir: Path,
        control_mode: str = "explicit",
        dist: Path | None = None,
        ort_threads: int = 1,
    ):
        self.source = source
        self.workdir = Path(workdir)
        self.repository = self.workdir / "models"
        self.backends = self.workdir / "backends"
        self.log_path = self.workdir / "tritonserver.log"
        self.control_mode = control_mode
        self.dist = dist or pytriton_dist()
        self.ort_threads = ort_threads
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.process: subprocess.Popen | None = None
        # Our own name for the python stubs' shared-memory regions, so that cleanup finds them.
        self.shm_prefix = f"sceneparse_triton_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self._log_handle = None

    # --- addresses -------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def url(self, protocol: str) -> str:
        return self.grpc_url if protocol == "grpc" else self.http_url

    # --- lifecycle -------------------------------------------------------------------------
    def prepare(self) -> None:
        binary = tritonserver_binary(self.dist)
        if not binary.is_file():
            raise TritonHarnessError(f"tritonserver not found at {binary}; run scripts/fetch_tritonserver.sh")
        self._backend_directory()
        self.sync()

    def sync(self) -> list[str]:
        """Mirror the source repository again (new versions, changed version_policy)."""
        return mirror_repository(self.source, self.repository)

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait until ready. The first start picks free ports (again, up to 3 times, if
        another process took one in between); later starts reuse them, as a restarted Triton would."""
        if self.process is not None and self.process.poll() is None:
            raise TritonHarnessError("tritonserver is already running")
        if not self.repository.is_dir():
            self.prepare()
        first = not self.http_port
        for attempt in range(3 if first else 1):
            if first:
                self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
            self._launch()
            try:
                self.wait_ready(timeout)
                return
            except TritonHarnessError as exc:
                if attempt == 2 or not first or "already in use" not in str(exc):
                    raise

    def _launch(self) -> None:
        self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self._log_handle.write(f"\n==== start {time.strftime('%H:%M:%S')} ====\n".encode())
        self._log_handle.flush()
        self.process = subprocess.Popen(
            self._command(),
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=self._environment(),
            cwd=self.workdir,
            start_new_session=True,  # its own process group: the python stubs die with it
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                self._reap()
                raise TritonHarnessError(f"tritonserver exited (code {code}) before it was ready\n{self.log_tail()}")
            if self._http_status("/v2/health/ready") == 200:
                return
            time.sleep(0.2)
        self.kill()  # never leave a half-started server behind
        raise TritonHarnessError(f"tritonserver not ready after {timeout:.0f}s\n{self.log_tail()}")

    def kill(self) -> None:
        """Crash it: SIGKILL to the whole process group (server and stubs), like an OOM kill."""
        self._signal_group(signal.SIGKILL)
        self._reap()

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM), then SIGKILL what is left after `timeout` seconds."""
        if self.process is None:
            return
        self._signal_group(signal.SIGTERM)
        self._signal_group(signal.SIGCONT)  # a paused server handles SIGTERM only once resumed
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
        self._reap()

    def pause(self) -> None:
        """SIGSTOP the server: it keeps its ports but answers nothing (a hung server)."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.is_file():
            return "(no tritonserver log)"
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)

    def model_ready(self, name: str, version: int | str = "") -> bool:
        path = f"/v2/models/{name}/versions/{version}/ready" if version != "" else f"/v2/models/{name}/ready"
        return self._http_status(path) == 200

    # --- internals -------------------------------------------------------------------------
    def _command(self) -> list[str]:
        command = [
            str(tritonserver_binary(self.dist)),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.backends}",
            f"--model-control-mode={self.control_mode}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--exit-timeout-secs=5",
            "--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        if self.control_mode == "explicit":
            command.append("--load-model=*")
        elif self.control_mode == "poll":
            command.append("--repository-poll-secs=1")
        return command

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = str(self.dist / "nvidia_pytriton.libs")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libs, env.get("LD_LIBRARY_PATH", "")) if p)
        paths = sysconfig.get_paths()
        env["SCENEPARSE_TRITON_SITE_PACKAGES"] = os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]]))
        env["SCENEPARSE_TRITON_ORT_THREADS"] = str(self.ort_threads)
        env["OMP_NUM_THREADS"] = str(self.ort_threads)
        return env

    def _backend_directory(self) -> None:
        # --backend-directory/python/ = the python backend + the stub built for this Python.
        server = self.dist / "pytriton" / "tritonserver"
        stub = server / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = stub / "triton_python_backend_stub"
        if not stub.is_file():
            raise TritonHarnessError(f"no python backend stub for Python {sys.version_info[:2]} at {stub}")
        python = self.backends / "python"
        python.mkdir(parents=True, exist_ok=True)
        for source in [*sorted((server / "backends" / "python").iterdir()), stub]:
            if not (python / source.name).exists():
                shutil.copy2(source, python / source.name)

    def _http_status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def _signal_group(self, sig: int) -> None:
        if self.process is None or self.process.poll() is not None:
            # The server is gone; stubs it left behind are still in its group.
            sig = signal.SIGKILL
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def _reap(self) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
            # Stubs outlive a killed server for a moment; they are in its group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _group_alive(self.process.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        # A killed server (or one past its exit timeout) leaves its stubs' regions in /dev/shm.
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            with contextlib.suppress(FileNotFoundError):
                region.unlink()
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
