"""deploy/lambda-actors.service: valid systemd syntax, and a service that runs the real command.

The unit is parsed here (sections, keys, repeated keys) so the checks work
on any machine; where ``systemd-analyze`` is installed it also verifies the
unit (with ExecStart pointed at an executable that exists here, since
/opt/lambda-actors is not installed on a test machine) and must not warn.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lambda_actors.bot.run import add_arguments

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "lambda-actors.service"

#: Every variable lambda-actors run reads (lambda-actors run --help).
KNOWN_ENVIRONMENT = {
    "MATRIX_HOMESERVER",
    "MATRIX_USER_ID",
    "MATRIX_PASSWORD",
    "MATRIX_PASSWORD_FILE",
    "MATRIX_ACCESS_TOKEN",
    "MATRIX_ACCESS_TOKEN_FILE",
    "LAMBDA_ACTORS_CONFIG",
}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values in order]}}; raises on a malformed line."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"line {number}: continuation lines are not used in this unit"
        if line.startswith("["):
            assert line.endswith("]"), f"line {number}: malformed section header {line!r}"
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"line {number}: a key before any section"
        key, sep, value = line.partition("=")
        assert sep and key.strip() and key.strip() == key.strip().replace(" ", ""), f"line {number}: not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def test_the_unit_has_its_sections(unit) -> None:
    assert list(unit) == ["Unit", "Service", "Install"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_execstart_runs_lambda_actors_run_with_options_it_accepts(unit) -> None:
    [command] = unit["Service"]["ExecStart"]
    program, subcommand, *options = shlex.split(command)
    assert Path(program).name == "lambda-actors" and subcommand == "run"
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    args = parser.parse_args(options)
    assert args.data_dir == Path("/var/lib/lambda-actors")
    assert str(args.control_socket).startswith("/run/lambda-actors/")
    assert args.config is None  # from LAMBDA_ACTORS_CONFIG
    environment = dict(e.split("=", 1) for e in unit["Service"]["Environment"])
    assert set(environment) <= KNOWN_ENVIRONMENT
    assert environment["LAMBDA_ACTORS_CONFIG"].startswith("/etc/lambda-actors/")


def test_the_secret_comes_from_a_credentials_file(unit) -> None:
    service = unit["Service"]
    [credential] = service["LoadCredential"]
    name, _, source = credential.partition(":")
    environment = dict(e.split("=", 1) for e in service["Environment"])
    assert environment["MATRIX_PASSWORD_FILE"] == f"%d/{name}"
    assert source.startswith("/etc/lambda-actors/")
    assert "MATRIX_PASSWORD" not in environment and "MATRIX_ACCESS_TOKEN" not in environment


def test_restart_policy_follows_the_exit_statuses(unit) -> None:
    service = unit["Service"]
    assert service["Restart"] == ["on-failure"]
    # Configuration, credentials and paths need the operator; restarting cannot fix them.
    assert service["RestartPreventExitStatus"] == ["2 3 5"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["StateDirectoryMode"] == ["0700"] and service["UMask"] == ["0077"]
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert service[hardening] == ["yes"], hardening
    assert service["ProtectSystem"] == ["strict"]


def test_the_unit_syntax_is_valid(tmp_path: Path) -> None:
    """systemd-analyze verify where it is installed (it must not warn about the
    unit); elsewhere the parser above is the syntax check."""
    text = UNIT.read_text()
    parse_unit(text)
    if shutil.which("systemd-analyze") is None:
        return
    [line] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    program = shlex.split(line.partition("=")[2])[0]
    copy = tmp_path / "lambda-actors.service"
    copy.write_text(text.replace(f"ExecStart={program} ", f"ExecStart={sys.executable} "))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    about_the_unit = [line for line in result.stderr.splitlines() if str(copy) in line or "lambda-actors.service:" in line]
    assert about_the_unit == [], result.stderr
    # The check is real: a misspelt key in the same unit is reported.
    copy.write_text(copy.read_text().replace("KillSignal=", "KilSignal="))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert "Unknown key 'KilSignal'" in result.stderr
