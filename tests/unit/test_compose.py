"""docker-compose.yml, the Dockerfile and env.example agree with the code (no Docker engine
needed): the services and their order, the commands they run, the settings they name."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from oddish.config import RENAMED_SETTINGS, Settings

REPO = Path(__file__).resolve().parents[2]
SERVICES = {"db", "temporal", "temporal-ui", "db-init", "api", "worker"}
ODDISH_SERVICES = ("db-init", "api", "worker")

# Read by something other than oddish.config.Settings.
KNOWN_EXTRAS = {
    "DATABASE_URL",  # an alias of ODDISH_DATABASE_URL
    "ODDISH_API_URL",  # the CLI's
    "ODDISH_DEFAULT_API_URL",  # the CLI's, when ODDISH_API_URL is unset
    "HARBOR_TELEMETRY",  # Harbor's own
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "GEMINI_API_KEY",
    "DAYTONA_API_KEY",
    "E2B_API_KEY",
    "MODAL_TOKEN_ID",
    "MODAL_TOKEN_SECRET",
    "RUNLOOP_API_KEY",
}
SETTING_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")


def load_compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def setting_names() -> set[str]:
    return {
        f"ODDISH_{name.upper()}" for name in Settings.model_fields if name not in RENAMED_SETTINGS
    }


def env_example() -> dict[str, str]:
    """Every NAME=value line of env.example, commented out or not."""
    found: dict[str, str] = {}
    for line in (REPO / "env.example").read_text().splitlines():
        if match := SETTING_LINE.match(line.strip()):
            found[match.group(1)] = match.group(2)
    return found


def command_of(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def python_module_commands(compose: dict) -> list[list[str]]:
    commands = [command_of(compose["services"][name]) for name in ODDISH_SERVICES]
    for keyword, rest in dockerfile_instructions():
        if keyword == "CMD":
            commands.append(yaml.safe_load(rest))  # exec form is a JSON list
    return [c for c in commands if c[:2] == ["python", "-m"] and c[2].startswith("oddish.")]


def test_the_six_services_start_in_order(compose: dict) -> None:
    services = compose["services"]
    assert set(services) >= SERVICES
    assert services["db"]["image"].startswith("postgres:16")
    assert services["temporal"]["image"].startswith(
        ("temporalio/auto-setup:", "temporalio/server:")
    )
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert services["db-init"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["temporal"]["depends_on"]["db"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["db-init"]["condition"] == "service_completed_successfully", name
        assert depends["temporal"]["condition"] == "service_healthy", name
    assert command_of(services["db-init"]) == ["python", "-m", "oddish.db", "setup"]
    assert command_of(services["api"])[:3] == ["python", "-m", "oddish.api"]
    assert "--no-workers" in command_of(services["api"])
    assert command_of(services["worker"]) == ["python", "-m", "oddish.worker"]


def test_oddish_services_share_one_image_database_temporal_and_files(compose: dict) -> None:
    services = compose["services"]
    for name in ODDISH_SERVICES:
        service = services[name]
        assert service["build"] == "." and service["image"] == services["api"]["image"], name
        env = service["environment"]
        assert "@db:5432/" in env["DATABASE_URL"] and env["DATABASE_URL"].startswith(
            "postgresql+asyncpg://"
        )
        assert env["ODDISH_TEMPORAL_ADDRESS"] == "temporal:7233"
        for key in ("ODDISH_TASKS_DIR", "ODDISH_HARBOR_JOBS_DIR", "ODDISH_STORAGE_DIR"):
            assert any(
                env[key].startswith(volume.split(":")[1]) for volume in service["volumes"]
            ), key
        assert set(env) <= setting_names() | KNOWN_EXTRAS, name


def test_commands_are_found(compose: dict) -> None:
    assert len(python_module_commands(compose)) == 4  # db-init, api, worker, the Dockerfile's CMD


@pytest.mark.parametrize("command", python_module_commands(load_compose()), ids=" ".join)
def test_every_command_exists_and_takes_its_flags(command: list[str]) -> None:
    """Each ``python -m oddish.X args`` runs with --help added: click rejects an unknown flag
    before it shows help, and each flag must be in that help."""
    env = {**os.environ, "COLUMNS": "200", "HARBOR_TELEMETRY": "0"}
    result = subprocess.run(
        [sys.executable, *command[1:], "--help"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    for flag in (arg for arg in command[3:] if arg.startswith("--")):
        assert flag in result.stdout, f"{command}: {flag} missing from its help"
    if command[2] == "oddish.db":
        assert command[3] in result.stdout


def test_env_example_names_only_real_settings_and_all_of_them() -> None:
    listed = env_example()
    assert set(listed) <= setting_names() | KNOWN_EXTRAS, (
        set(listed) - setting_names() - KNOWN_EXTRAS
    )
    assert setting_names() <= set(listed), f"undocumented: {setting_names() - set(listed)}"
    assert listed["HARBOR_TELEMETRY"] == "0"


def test_env_example_values_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every line uncommented, Settings accepts the example values."""
    for name in list(os.environ):
        if name.startswith("ODDISH_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env_example().items()))
    settings = Settings(_env_file=env_file)
    assert settings.database_url and settings.temporal_address == "localhost:7233"
    assert settings.model_concurrency["openai/gpt-5"] == 8


def test_dockerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.12-slim")
    assert any(k == "RUN" and "bubblewrap" in rest for k, rest in instructions)
    assert any(k == "RUN" and "uv sync" in rest for k, rest in instructions)
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for keyword, rest in instructions:
        if keyword != "COPY" or rest.startswith("--from="):
            continue
        *sources, _target = shlex.split(rest)
        copied += sources
    assert {"pyproject.toml", "uv.lock", "src", "alembic"} <= set(copied)
    for source in copied:
        assert (REPO / source).exists(), source
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source


def _interpolated(value: str) -> str:
    """``${NAME:-default}`` as compose fills it when .env does not set NAME."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def published_ports(compose: dict) -> list[tuple[str, str | None]]:
    """(service, host address) of every published port, short or long syntax."""
    found: list[tuple[str, str | None]] = []
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                found.append((name, port.get("host_ip")))
                continue
            parts = _interpolated(str(port)).rsplit(":", 2)
            found.append((name, parts[0].strip("[]") if len(parts) == 3 else None))
    return found


def test_no_port_is_published_beyond_loopback(compose: dict) -> None:
    """Postgres (oddish/oddish), Temporal and its UI have no authentication of their own; the
    API without ODDISH_API_KEY neither."""
    from oddish.api.exposure import is_loopback

    ports = published_ports(compose)
    assert {name for name, _ in ports} == {"db", "temporal", "temporal-ui", "api"}
    for name, host in ports:
        assert host is not None and is_loopback(host), f"{name} publishes on {host or 'all'}"


def test_the_api_key_rule_judges_where_compose_publishes_the_api(compose: dict) -> None:
    """The API binds the container's 0.0.0.0: it must be told where its port is published, and
    that must be the address the port is published on."""
    from oddish.api.exposure import check_exposure

    api = compose["services"]["api"]
    command = command_of(api)
    assert command[command.index("--host") + 1] == "0.0.0.0"
    [port] = api["ports"]
    published = api["environment"]["ODDISH_API_PUBLISHED_HOST"]
    assert str(port).startswith(f"{published}:"), "the port and the setting move together"
    assert check_exposure(_interpolated(published), None) is None, "starts without a key"
    assert check_exposure("0.0.0.0", None) is not None, "published further, it needs one"


def test_no_service_is_privileged(compose: dict) -> None:
    for name, service in compose["services"].items():
        assert not service.get("privileged"), name
        assert service.get("network_mode") != "host" and service.get("pid") != "host", name
        assert "ALL" not in service.get("cap_add", []), name
        for volume in service.get("volumes", []):
            assert "docker.sock" not in str(volume), name
    # What bubblewrap needs for the `local` sandbox, and nothing more.
    assert set(compose["services"]["worker"].get("cap_add", [])) <= {"SYS_ADMIN", "NET_ADMIN"}
