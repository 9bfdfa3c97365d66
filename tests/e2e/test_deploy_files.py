"""The deployment files (compose.yaml, .env.example, Dockerfile, .dockerignore, docs) agree with each other and
with the code, and the image's install steps (deploy/docker/install.sh) produce a working gateway.

No Docker engine runs here: the compose file is checked as data, and the Dockerfile's install script, COPY
lines and HEALTHCHECK command are run directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import __version__
from gateway.core.config import Config, load_config
from tests.support.nginx_harness import TEMPLATES
from tests.support.processes import LOOPBACK, free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
INSTALL_SCRIPT = REPO / "deploy" / "docker" / "install.sh"
CONFIGURATION_DOC = REPO / "docs" / "configuration.md"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
INSTALL_TIMEOUT_S = 300.0
SERVE_TIMEOUT_S = 30.0

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}, ${NAME:+alt}, $NAME; $$ escapes.
COMPOSE_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
TEMPLATE_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


# ---------------------------------------------------------------------------------------------------------
# Reading the files


def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict) and found
    return found


def env_example() -> dict[str, str]:
    """KEY=value lines as docker compose reads a .env file (surrounding quotes removed)."""
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env.example: not KEY=value: {line!r}"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def compose_variables(text: str) -> set[str]:
    return {m["braced"] or m["bare"] for m in COMPOSE_VARIABLE.finditer(text.replace("$$", ""))}


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """docker compose's interpolation of one value."""

    def replace(match: re.Match[str]) -> str:
        name = match["braced"] or match["bare"]
        op, arg = match["op"] or "", match["arg"] or ""
        current = variables.get(name)
        present = current is not None and (current != "" or ":" not in op)
        if op.endswith("-"):
            return current if present and current is not None else arg
        if op.endswith("?"):
            assert present and current is not None, f"compose would refuse to start: {name}: {arg}"
            return current
        if op.endswith("+"):
            return arg if present else ""
        return current or ""

    return COMPOSE_VARIABLE.sub(replace, value.replace("$$", "\0")).replace("\0", "$")


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {str(key): str(value) for key, value in environment.items()}


def gateway_services() -> dict[str, dict[str, Any]]:
    """Services built from this repository's Dockerfile: the gateway replicas."""
    return {
        name: service
        for name, service in services().items()
        if isinstance(service.get("build"), dict) and service["build"].get("dockerfile") == DOCKERFILE.name
    }


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile() -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    instructions = []
    for line in logical:
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append(Instruction(keyword.upper(), arguments.strip()))
    return instructions


def instructions(keyword: str) -> list[str]:
    return [instruction.arguments for instruction in dockerfile() if instruction.keyword == keyword]


def config_keys() -> list[tuple[str, str, Any]]:
    """(section, key, default) for every key of gateway.core.config's dataclasses."""
    keys = []
    defaults = Config()
    for section in dataclasses.fields(Config):
        values = getattr(defaults, section.name)
        for key in dataclasses.fields(values):
            keys.append((section.name, key.name, getattr(values, key.name)))
    return keys


def toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | list):
        return json.dumps(value)
    return repr(value)


# ---------------------------------------------------------------------------------------------------------
# compose.yaml and .env.example


def test_every_variable_the_compose_file_uses_is_in_env_example() -> None:
    missing = compose_variables(COMPOSE.read_text(encoding="utf-8")) - set(env_example())
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_env_example_holds_no_variable_the_compose_file_does_not_use() -> None:
    unused = set(env_example()) - compose_variables(COMPOSE.read_text(encoding="utf-8"))
    assert not unused, f"unused in compose.yaml: {sorted(unused)}"


def test_every_local_path_the_compose_file_references_exists() -> None:
    for name, service in services().items():
        build = service.get("build")
        if isinstance(build, dict):
            context = REPO / build.get("context", ".")
            assert context.is_dir(), f"{name}: build context {context}"
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: Dockerfile"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if source.startswith(("./", "../", "/")):
                assert (REPO / source).exists(), f"{name}: mounted {source} does not exist"
            elif "$" not in source:
                assert source in (compose().get("volumes") or {}), f"{name}: volume {source} is not declared"


def test_every_service_named_in_depends_on_exists() -> None:
    known = set(services())
    for name, service in services().items():
        dependencies = service.get("depends_on", [])
        assert set(dependencies) <= known, f"{name} depends on unknown {sorted(set(dependencies) - known)}"


def test_every_pulled_image_is_pinned_to_a_version() -> None:
    for name, service in services().items():
        if "build" in service:
            continue
        image = service["image"]
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"


def test_data_lives_in_named_volumes() -> None:
    mounted = {
        volume.split(":", 1)[1]
        for service in services().values()
        for volume in service.get("volumes", [])
        if isinstance(volume, str) and not volume.startswith(("./", "/", "$"))
    }
    assert {"/data", "/var/lib/postgresql/data"} <= mounted


def test_there_are_at_least_two_gateway_replicas_sharing_one_token_secret() -> None:
    replicas = gateway_services()
    assert len(replicas) >= 2
    secrets = {environment_of(service).get("GATEWAY_UPLOADS_TOKEN_SECRET") for service in replicas.values()}
    assert len(secrets) == 1
    (secret,) = secrets
    assert secret is not None and compose_variables(secret), "the secret must come from .env, not the file"


def test_every_gateway_replica_gets_a_valid_configuration_from_env_example() -> None:
    variables = env_example()
    image_defaults = dict(re.findall(r"(GATEWAY_[A-Z_]+)=(\S+)", " ".join(instructions("ENV"))))
    for name, service in gateway_services().items():
        environment = {key: interpolate(value, variables) for key, value in environment_of(service).items()}
        config = load_config(None, {**image_defaults, **environment})
        assert config.server.public_url == variables["PUBLIC_URL"], name
        assert config.s3.external_endpoint == variables["S3_PUBLIC_URL"], name


def test_nginx_gets_every_template_variable_and_the_templates_directory() -> None:
    (nginx,) = [service for service in services().values() if str(service.get("image", "")).startswith("nginx:")]
    template_variables = {
        name for template in TEMPLATES.rglob("*.template") for name in TEMPLATE_VARIABLE.findall(template.read_text())
    }
    assert template_variables <= set(environment_of(nginx))
    assert "./deploy/nginx/templates:/etc/nginx/templates:ro" in nginx["volumes"]


def test_every_nginx_template_variable_is_documented() -> None:
    documented = DEPLOY_DOC.read_text(encoding="utf-8")
    for template in TEMPLATES.rglob("*.template"):
        for name in TEMPLATE_VARIABLE.findall(template.read_text(encoding="utf-8")):
            assert f"| `{name}` |" in documented, f"{name} ({template.name}) missing from docs/deploy.md"


# ---------------------------------------------------------------------------------------------------------
# docs/configuration.md


def test_configuration_doc_lists_every_key_with_its_environment_variable_and_default() -> None:
    rows = {
        match[1]: match[0]
        for match in re.findall(r"^(\| `([a-z0-9_]+\.[a-z0-9_]+)` \|.*)$", CONFIGURATION_DOC.read_text(), re.M)
    }
    for section, key, default in config_keys():
        row = rows.get(f"{section}.{key}")
        assert row is not None, f"{section}.{key} missing from docs/configuration.md"
        assert f"`GATEWAY_{section.upper()}_{key.upper()}`" in row, f"{section}.{key}: environment variable"
        assert f"`{toml_literal(default)}`" in row, f"{section}.{key}: default {toml_literal(default)}"
    known = {f"{section}.{key}" for section, key, _ in config_keys()}
    assert set(rows) <= known, f"documented but not in gateway.core.config: {sorted(set(rows) - known)}"


# ---------------------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def test_dockerfile_builds_on_a_pinned_slim_python_in_both_stages() -> None:
    (base,) = [argument for argument in instructions("ARG") if argument.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-[a-z]+", base)
    stages = instructions("FROM")
    assert len(stages) == 2 and all(stage.startswith("${PYTHON_IMAGE}") for stage in stages)


def test_dockerfile_installs_with_the_shared_install_script() -> None:
    runs = " ".join(instructions("RUN"))
    assert re.search(r"source=deploy/docker/install\.sh.* wheels /src /wheels", runs)
    assert re.search(r"from=build,source=/wheels.*install-signing-gateway venv /wheels /opt/signing-gateway", runs)


def test_dockerfile_runs_unprivileged_with_the_documented_entrypoint() -> None:
    (user,) = instructions("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert instructions("ENTRYPOINT") == ['["signing-gateway"]']
    assert instructions("CMD") == ['["serve"]']
    assert instructions("STOPSIGNAL") == ["SIGTERM"]
    (healthcheck,) = instructions("HEALTHCHECK")
    assert "/_gateway/healthz" in healthcheck and "curl" not in healthcheck


def test_dockerignore_lets_in_everything_the_dockerfile_copies_or_mounts() -> None:
    allowed = {line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    assert "*" in DOCKERIGNORE.read_text().splitlines(), "expected an allow-list .dockerignore"
    needed = {source for line in instructions("COPY") if "--from" not in line for source in line.split()[:-1]}
    needed |= set(re.findall(r"--mount=type=bind,source=([^,\s]+)", " ".join(instructions("RUN"))))
    assert needed and needed <= allowed, f"excluded from the build context: {sorted(needed - allowed)}"


# ---------------------------------------------------------------------------------------------------------
# The image's install steps, run here


def healthcheck_command() -> list[str]:
    (healthcheck,) = instructions("HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD ") + len("CMD ") :])
    assert isinstance(command, list)
    return [str(part) for part in command]


def build_context(destination: Path) -> Path:
    """The files the build stage COPYs, laid out as in the image's /src (Docker's COPY rules, .dockerignore's
    cache exclusions)."""
    for line in instructions("COPY"):
        if "--from" in line:
            continue
        *sources, target = line.split()
        target_dir = destination / target.removeprefix("/src").strip("/")
        for source in sources:
            origin = REPO / source
            if origin.is_dir():  # a directory's contents go into the target
                shutil.copytree(origin, target_dir, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
            else:
                copy = target_dir / origin.name if target.endswith("/") else target_dir
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, copy)
    return destination


def run_install(*arguments: str | Path) -> None:
    environment = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        ["sh", str(INSTALL_SCRIPT), *map(str, arguments)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"install.sh {arguments[0]} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv made by the image's two install steps; returns its bin/ directory."""
    root = tmp_path_factory.mktemp("image")
    source = build_context(root / "src")
    run_install("wheels", source, root / "wheels")
    run_install("venv", root / "wheels", root / "venv")
    return root / "venv" / "bin"


def gateway_environment(bin_dir: Path, **overrides: str) -> dict[str, str]:
    """What a container would have: PATH with the venv first, GATEWAY_* and nothing else from this machine."""
    return {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "GATEWAY_SERVER_PUBLIC_URL": "https://registry.example.org",
        "GATEWAY_UPSTREAM_URL": "http://127.0.0.1:9",
        "GATEWAY_S3_INTERNAL_ENDPOINT": "http://127.0.0.1:9",
        "GATEWAY_S3_EXTERNAL_ENDPOINT": "https://s3.example.org",
        "GATEWAY_S3_ACCESS_KEY": "access-key",
        "GATEWAY_S3_SECRET_KEY": "secret-key-not-to-be-printed",
        "GATEWAY_UPLOADS_TOKEN_SECRET": "token-secret-not-to-be-printed",
        **overrides,
    }


def test_the_installed_command_reports_the_package_version(installed: Path) -> None:
    result = subprocess.run(
        [str(installed / "signing-gateway"), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"signing-gateway {__version__}"


def test_the_installed_venv_has_no_pip(installed: Path) -> None:
    assert not (installed / "pip").exists()


def test_the_installed_gateway_is_configured_by_the_environment_alone(installed: Path) -> None:
    result = subprocess.run(
        [str(installed / "signing-gateway"), "check-config"],
        capture_output=True,
        text=True,
        env=gateway_environment(installed),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["s3"]["external_endpoint"] == "https://s3.example.org"
    assert "not-to-be-printed" not in result.stdout


def test_the_installed_gateway_refuses_a_missing_token_secret_with_exit_code_2(installed: Path) -> None:
    result = subprocess.run(
        [str(installed / "signing-gateway"), "check-config"],
        capture_output=True,
        text=True,
        env=gateway_environment(installed, GATEWAY_UPLOADS_TOKEN_SECRET=""),
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "uploads.token_secret" in result.stderr


@pytest.fixture
def serving(installed: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    """``signing-gateway serve`` (the image's ENTRYPOINT + CMD) from the installed venv, on loopback."""
    environment = gateway_environment(installed, GATEWAY_SERVER_LISTEN=f"{LOOPBACK}:{free_port()}")
    command = [*(json.loads(entry)[0] for entry in instructions("ENTRYPOINT")), *json.loads(instructions("CMD")[0])]
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        yield process, environment
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=SERVE_TIMEOUT_S)
        if process.stderr:
            process.stderr.close()


def test_the_image_healthcheck_passes_and_sigterm_stops_the_gateway_cleanly(
    serving: tuple[subprocess.Popen[bytes], dict[str, str]],
) -> None:
    process, environment = serving
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while True:
        assert process.poll() is None, "the gateway exited before becoming healthy"
        check = subprocess.run(healthcheck_command(), env=environment, capture_output=True, timeout=10, check=False)
        if check.returncode == 0:
            break
        assert time.monotonic() < deadline, f"healthcheck still failing: {check.stderr.decode()}"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=SERVE_TIMEOUT_S) == 0
