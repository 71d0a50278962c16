"""The Synapse test harness itself: it starts, answers, registers users, stops."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from lambda_actors.loopback.homeserver import HomeserverError, register_user, start_synapse, stop_synapse

ROOT = Path(__file__).resolve().parents[2]


def _process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_matrix_homeserver_fixture_serves_the_client_api_on_loopback_only(synapse):
    assert synapse.url.startswith("http://127.0.0.1:")
    versions = httpx.get(f"{synapse.url}/_matrix/client/versions")
    assert versions.status_code == 200
    assert "v1.11" in versions.json()["versions"]
    # No federation resource is mounted on the listener.
    assert httpx.get(f"{synapse.url}/_matrix/federation/v1/version").status_code == 404
    # Open registration is off: only the shared-secret admin API makes users.
    refused = httpx.post(f"{synapse.url}/_matrix/client/v3/register", json={"username": "x", "password": "y"})
    assert refused.status_code == 403


def test_matrix_homeserver_registers_users_whose_tokens_work(synapse, matrix_user):
    alice = matrix_user("alice")
    admin = matrix_user("boss", admin=True)
    assert alice.user_id.startswith("@alice-") and alice.user_id.endswith(":localhost")
    assert alice.user_id != matrix_user("alice").user_id
    whoami = httpx.get(
        f"{synapse.url}/_matrix/client/v3/account/whoami",
        headers={"Authorization": f"Bearer {alice.access_token}"},
    ).json()
    assert whoami == {"user_id": alice.user_id, "device_id": alice.device_id, "is_guest": False}
    # The admin flag reached Synapse: only an admin may list users.
    listing = f"{synapse.url}/_synapse/admin/v2/users"
    assert httpx.get(listing, headers={"Authorization": f"Bearer {admin.access_token}"}).status_code == 200
    assert httpx.get(listing, headers={"Authorization": f"Bearer {alice.access_token}"}).status_code == 403
    # The password was set: a password login works.
    login = httpx.post(
        f"{synapse.url}/_matrix/client/v3/login",
        json={"type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": alice.password},
    )
    assert login.status_code == 200


def test_matrix_homeserver_register_with_a_wrong_secret_is_refused(synapse):
    with pytest.raises(HomeserverError, match="HTTP 403"):
        register_user(synapse.url, "not-the-secret", "mallory", "pw")


def test_matrix_homeserver_user_repr_hides_secrets(matrix_user):
    user = matrix_user()
    assert user.access_token not in repr(user) and user.password not in repr(user)


def test_matrix_homeserver_refuses_a_second_start_from_the_same_directory(synapse):
    with pytest.raises(HomeserverError, match="already running"):
        start_synapse(synapse.directory)


def test_matrix_homeserver_stop_leaves_a_foreign_pid_alone(tmp_path):
    # A recorded PID that does not run this directory's Synapse (here: pytest
    # itself, standing in for a reused PID) must not be signalled.
    (tmp_path / "synapse.json").write_text(json.dumps({"pid": os.getpid()}))
    assert stop_synapse(tmp_path) is False
    assert not (tmp_path / "synapse.json").exists()


def test_matrix_homeserver_script_starts_and_stops_its_own_synapse(tmp_path):
    script = ROOT / "scripts" / "synapse"
    started = subprocess.run([script, "start", tmp_path, "auto"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    # The first line is the URL (for scripts); the rest tells a person what to do next.
    url, *advice = started.stdout.splitlines()
    assert any("scripts/synapse register" in line for line in advice)
    pid = json.loads((tmp_path / "synapse.json").read_text())["pid"]
    try:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/_matrix/client/versions").status_code == 200
        # The script's own interpreter has exited; Synapse runs on, detached,
        # logging to files in the directory rather than to a console.
        assert _process_alive(pid)
        assert (tmp_path / "homeserver.log").stat().st_size > 0
    finally:
        stopped = subprocess.run([script, "stop", tmp_path], capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert not _process_alive(pid)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/_matrix/client/versions")
