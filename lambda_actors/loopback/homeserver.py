"""A throwaway local Synapse homeserver: start it, register users, stop it.

Tests, ``scripts/synapse``, the demo and the chaos commands all need a real
homeserver that nobody has to install or configure by hand. This module owns
that process: it writes a configuration into one directory (SQLite, loopback
only, no TLS, no federation listener, shared-secret registration), starts
Synapse from the current interpreter, waits until the client API answers, and
records the PID so that :func:`stop_synapse` stops that process and nothing
else, even from another Python process.

It is synchronous on purpose: this is process management, used from pytest
fixtures and command-line scripts, not from inside the bot's event loop.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import yaml

__all__ = [
    "Homeserver",
    "HomeserverError",
    "RegisteredUser",
    "free_port",
    "register_user",
    "start_synapse",
    "stop_synapse",
]

SERVER_NAME = "localhost"

# File names inside the homeserver's directory.
_BASE_CONFIG = "homeserver.yaml"
_OVERRIDES = "overrides.yaml"
_LOG_CONFIG = "log.config.yaml"
_LOG_FILE = "homeserver.log"
_CONSOLE_FILE = "console.log"
_STATE_FILE = "synapse.json"

# Far above anything a test or the demo does, so only the tests that start a
# Synapse with ``rate_limits="default"`` ever see a 429.
_UNLIMITED = {"per_second": 100_000, "burst_count": 1_000_000}
_RELAXED_RATE_LIMITS: dict[str, object] = {
    "rc_message": _UNLIMITED,
    "rc_registration": _UNLIMITED,
    "rc_registration_token_validity": _UNLIMITED,
    "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED, "failed_attempts": _UNLIMITED},
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_joins_per_room": _UNLIMITED,
    "rc_invites": {"per_room": _UNLIMITED, "per_user": _UNLIMITED, "per_issuer": _UNLIMITED},
    "rc_third_party_invite": _UNLIMITED,
    "rc_room_creation": _UNLIMITED,
    "rc_media_create": _UNLIMITED,
    "rc_delayed_event_mgmt": _UNLIMITED,
    "rc_3pid_validation": _UNLIMITED,
    "rc_admin_redaction": _UNLIMITED,
    "rc_key_requests": _UNLIMITED,
    "rc_presence": {"per_user": _UNLIMITED},
    "rc_reports": _UNLIMITED,
    "rc_user_directory": _UNLIMITED,
    "rc_profile": _UNLIMITED,
}


class HomeserverError(RuntimeError):
    """Synapse could not be started, stopped or asked to register a user."""


@dataclass(frozen=True)
class Homeserver:
    """A running Synapse, as :func:`start_synapse` left it."""

    url: str
    server_name: str
    registration_shared_secret: str = field(repr=False)
    pid: int
    directory: Path

    @property
    def log_file(self) -> Path:
        """Synapse's own log; read it when a test against the server fails."""
        return self.directory / _LOG_FILE


@dataclass(frozen=True)
class RegisteredUser:
    """A Matrix account made by :func:`register_user`, logged in on one device."""

    user_id: str
    access_token: str
    password: str
    device_id: str

    def __repr__(self) -> str:
        # Secrets stay out of tracebacks, pytest's assertion output and logs.
        return f"RegisteredUser(user_id={self.user_id!r}, device_id={self.device_id!r})"


# Attached children of this process, so stop_synapse can reap them (no
# zombies) and the exit hook can stop any that a caller forgot.
_children: dict[int, subprocess.Popen[bytes]] = {}


def start_synapse(
    directory: str | os.PathLike[str],
    port: int | Literal["auto"] = "auto",
    rate_limits: Literal["relaxed", "default"] = "relaxed",
    *,
    detach: bool = False,
    timeout: float = 60.0,
) -> Homeserver:
    """Start a Synapse whose configuration, database, media and logs live in *directory*.

    ``port="auto"`` picks a free port on 127.0.0.1. ``rate_limits="relaxed"``
    raises every ``rc_*`` limit out of the way; ``"default"`` keeps Synapse's
    own (0.2 messages/s, burst 10) for tests of 429 handling.

    By default Synapse is tied to the calling process: it is stopped when
    this interpreter exits, and (when started from the main thread) Linux
    kills it if the caller dies without cleaning up, so even a test run killed
    with SIGKILL leaves nothing behind. ``detach=True`` lets it outlive the
    caller, as ``scripts/synapse start`` needs; stop it with
    :func:`stop_synapse`.

    Raises :class:`HomeserverError` if Synapse is already running from this
    directory, exits early, or does not answer within *timeout* seconds.
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if (running := _recorded_pid(directory)) is not None:
        raise HomeserverError(
            f"a Synapse (pid {running}) is already running from {directory}; "
            f"stop it first with stop_synapse({str(directory)!r}) or `scripts/synapse stop {directory}`"
        )
    if rate_limits not in ("relaxed", "default"):
        raise ValueError(f"rate_limits must be 'relaxed' or 'default', not {rate_limits!r}")

    if not (directory / _BASE_CONFIG).exists():
        _write_base_config(directory)

    deadline = time.monotonic() + timeout
    # An automatically chosen port can be taken by someone else between our
    # probe and Synapse's bind; try a few before giving up.
    attempts = 3 if port == "auto" else 1
    for attempt in range(attempts):
        chosen = free_port() if port == "auto" else int(port)
        secret = _write_overrides(directory, chosen, rate_limits)
        process = _spawn(directory, detach)
        url = f"http://127.0.0.1:{chosen}"
        try:
            _wait_until_ready(process, url, directory, deadline)
        except _ExitedEarly as exc:
            _forget(directory, process.pid)
            if attempt + 1 < attempts and _port_in_use(chosen):
                continue
            raise HomeserverError(str(exc)) from None
        except BaseException:
            _terminate(process.pid, process)
            _forget(directory, process.pid)
            raise
        return Homeserver(
            url=url,
            server_name=SERVER_NAME,
            registration_shared_secret=secret,
            pid=process.pid,
            directory=directory,
        )
    raise AssertionError("unreachable")  # pragma: no cover


def stop_synapse(directory: str | os.PathLike[str], timeout: float = 15.0) -> bool:
    """Stop the Synapse that :func:`start_synapse` started from *directory*.

    Only the recorded PID is signalled, and only while that PID still runs
    Synapse with this directory's configuration (a PID reused by another
    program is left alone). SIGTERM first; SIGKILL after *timeout* seconds.
    Returns True if a running Synapse was stopped, False if none was running.
    """
    directory = Path(directory).resolve()
    pid = _recorded_pid(directory)
    if pid is None:
        _forget(directory, None)
        return False
    _terminate(pid, _children.get(pid), timeout)
    _forget(directory, pid)
    return True


def register_user(
    url: str,
    shared_secret: str,
    localpart: str,
    password: str,
    admin: bool = False,
    *,
    timeout: float = 30.0,
) -> RegisteredUser:
    """Create a user through Synapse's shared-secret admin API and log them in.

    The MAC is HMAC-SHA1 keyed with the registration shared secret over
    ``nonce NUL user NUL password NUL admin|notadmin``, as the admin API
    demands; the nonce is fetched first and is single-use.
    """
    endpoint = f"{url.rstrip('/')}/_synapse/admin/v1/register"
    with httpx.Client(timeout=timeout) as http:
        nonce_response = http.get(endpoint)
        _raise_for_admin_status(nonce_response, "fetch a registration nonce")
        nonce = nonce_response.json()["nonce"]
        mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(
            b"\x00".join(
                [nonce.encode(), localpart.encode(), password.encode(), b"admin" if admin else b"notadmin"]
            )
        )
        response = http.post(
            endpoint,
            json={
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            },
        )
        _raise_for_admin_status(response, f"register {localpart!r}")
        body = response.json()
    return RegisteredUser(
        user_id=body["user_id"],
        access_token=body["access_token"],
        password=password,
        device_id=body["device_id"],
    )


# -- configuration -----------------------------------------------------------


def _write_base_config(directory: Path) -> None:
    """Write the server's identity and secrets, once per directory.

    This is what ``--generate-config`` would produce that matters (a signing
    key, the secrets), without starting a second Synapse process just for that.
    Everything else is in the overrides file, rewritten on every start.
    """
    from signedjson.key import encode_signing_key_base64, generate_signing_key  # Synapse's own dependency

    key = generate_signing_key("a_" + secrets.token_hex(2))
    base = {
        "server_name": SERVER_NAME,
        "signing_key": f"{key.alg} {key.version} {encode_signing_key_base64(key)}",
        "macaroon_secret_key": secrets.token_urlsafe(32),
        "form_secret": secrets.token_urlsafe(32),
        "registration_shared_secret": secrets.token_urlsafe(32),
    }
    path = directory / _BASE_CONFIG
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(base))


def _write_overrides(directory: Path, port: int, rate_limits: str) -> str:
    """Write the file passed as the second ``-c``; return the registration secret.

    Synapse merges config files per top-level key, later files winning, so
    everything that matters for a throwaway local server is stated here.
    """
    secret = yaml.safe_load((directory / _BASE_CONFIG).read_text())["registration_shared_secret"]

    log_config = {
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(levelname)s - %(request)s - %(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": str(directory / _LOG_FILE),
                "encoding": "utf8",
            }
        },
        # Synapse's SQL logger at DEBUG would write access tokens to the file.
        "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }
    (directory / _LOG_CONFIG).write_text(yaml.safe_dump(log_config))

    overrides: dict[str, object] = {
        "server_name": SERVER_NAME,
        "pid_file": str(directory / "homeserver.pid"),
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(directory / "homeserver.db")}},
        "media_store_path": str(directory / "media_store"),
        "log_config": str(directory / _LOG_CONFIG),
        "enable_registration": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "report_stats": False,
        "enable_metrics": False,
        "presence": {"enabled": False},
        "url_preview_enabled": False,
        # Password hashing at the default cost takes ~0.25 s per registration
        # or login; a throwaway server has no passwords worth that.
        "bcrypt_rounds": 4,
        # Delayed events (MSC4140): nodes schedule their own `offline` state
        # with them, so a dead node is marked by the homeserver (SPEC 8.2).
        "max_event_delay_duration": "24h",
    }
    if rate_limits == "relaxed":
        overrides.update(_RELAXED_RATE_LIMITS)
    (directory / _OVERRIDES).write_text(yaml.safe_dump(overrides, sort_keys=False))
    return secret


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now (the kernel's pick; another
    process may take it before it is bound again, which loopback tests accept)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


# -- the process -------------------------------------------------------------


class _ExitedEarly(Exception):
    pass


def _spawn(directory: Path, detach: bool) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "synapse.app.homeserver",
        "-c",
        str(directory / _BASE_CONFIG),
        "-c",
        str(directory / _OVERRIDES),
    ]
    with open(directory / _CONSOLE_FILE, "ab") as console:
        process = subprocess.Popen(
            command,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C meant for the caller's terminal does not
            # race our orderly stop, and scripts/synapse can exit and leave it.
            start_new_session=True,
            # PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it
            # is only safe from the main thread (a worker thread may be
            # retired long before the program ends).
            preexec_fn=_die_with_parent if not detach and threading.current_thread() is threading.main_thread() else None,
        )
    if not detach:
        _children[process.pid] = process
    (directory / _STATE_FILE).write_text(json.dumps({"pid": process.pid, "command": command}))
    return process


def _die_with_parent() -> None:  # pragma: no cover - runs in the child after fork
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _wait_until_ready(process: subprocess.Popen[bytes], url: str, directory: Path, deadline: float) -> None:
    versions = f"{url}/_matrix/client/versions"
    with httpx.Client(timeout=2.0) as http:
        while True:
            if process.poll() is not None:
                raise _ExitedEarly(
                    f"Synapse exited with status {process.returncode} while starting; "
                    f"last lines of its output:\n{_tail(directory)}"
                )
            try:
                if http.get(versions).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise HomeserverError(
                    f"Synapse did not answer {versions} in time; last lines of its output:\n{_tail(directory)}"
                )
            # Polling a child process that gives no readiness signal of its own.
            time.sleep(0.05)


def _tail(directory: Path, lines: int = 20) -> str:
    chunks = []
    for name in (_CONSOLE_FILE, _LOG_FILE):
        path = directory / name
        if path.exists():
            chunks.extend(path.read_text(errors="replace").splitlines()[-lines:])
    return "\n".join(chunks) or "(no output)"


def _recorded_pid(directory: Path) -> int | None:
    """The PID start_synapse recorded, if that process is still our Synapse."""
    try:
        state = json.loads((directory / _STATE_FILE).read_text())
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if _is_our_synapse(pid, directory) else None


def _is_our_synapse(pid: int, directory: Path) -> bool:
    """True while *pid* is alive and runs Synapse with this directory's config.

    Checking the command line guards against PID reuse: after a reboot or a
    crash the recorded number may belong to an unrelated program.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return b"synapse.app.homeserver" in cmdline and str(directory / _OVERRIDES).encode() in cmdline


def _terminate(pid: int, process: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    if process is not None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return
    # Started by another process (scripts/synapse start): we cannot wait() on
    # it, so watch /proc until it is gone.
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + timeout
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _forget(directory: Path, pid: int | None) -> None:
    if pid is not None:
        _children.pop(pid, None)
    (directory / _STATE_FILE).unlink(missing_ok=True)


def _raise_for_admin_status(response: httpx.Response, what: str) -> None:
    if response.status_code == 200:
        return
    try:
        detail = response.json()
    except ValueError:
        detail = response.text[:200]
    raise HomeserverError(f"Synapse refused to {what}: HTTP {response.status_code} {detail}")


def _stop_forgotten_children() -> None:
    for pid, process in list(_children.items()):
        _terminate(pid, process, timeout=5.0)
    _children.clear()


atexit.register(_stop_forgotten_children)


# -- the command line (scripts/synapse) ------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``scripts/synapse start|stop|register``: a throwaway homeserver for a first run.

    ``start`` prints the URL on its first line (scripts read it), then the
    server name and the commands to register accounts and to stop it.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="scripts/synapse", description="A throwaway Synapse homeserver on 127.0.0.1 (SQLite, no TLS, no federation)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    start = commands.add_parser("start", help="start it in DIR and print its URL")
    start.add_argument("directory", metavar="DIR", help="where its configuration, database and logs live")
    start.add_argument("port", nargs="?", default="auto", metavar="PORT", help="a port on 127.0.0.1, or auto (default)")
    stop = commands.add_parser("stop", help="stop the Synapse started from DIR")
    stop.add_argument("directory", metavar="DIR")
    register = commands.add_parser("register", help="create an account on the Synapse running from DIR")
    register.add_argument("directory", metavar="DIR")
    register.add_argument("name", metavar="NAME", help="the account's local part: NAME becomes @NAME:localhost")
    register.add_argument("--password", help="its password (default: a new random one, printed)")
    register.add_argument("--admin", action="store_true", help="make it a server admin")
    args = parser.parse_args(argv)
    directory = Path(args.directory).resolve()

    if args.command == "start":
        if args.port != "auto" and not args.port.isdigit():
            parser.error(f"PORT must be a number or auto, not {args.port!r}")
        try:
            server = start_synapse(directory, "auto" if args.port == "auto" else int(args.port), detach=True)
        except HomeserverError as exc:
            print(f"synapse: {exc}", file=sys.stderr)
            return 1
        print(server.url)
        print(f'Synapse is running; its server name is "{server.server_name}", so user ids look like @alice:{server.server_name}.')
        print(f"Register an account:  scripts/synapse register {directory} NAME [--password PASSWORD]")
        print(f"Stop it:              scripts/synapse stop {directory}")
        return 0
    if args.command == "stop":
        if not stop_synapse(directory):
            print(f"synapse: no Synapse started from {directory} is running", file=sys.stderr)
        return 0
    url = _running_url(directory)
    if url is None:
        print(f"synapse: no Synapse started from {directory} is running; start it with: scripts/synapse start {directory}", file=sys.stderr)
        return 1
    secret = yaml.safe_load((directory / _BASE_CONFIG).read_text())["registration_shared_secret"]
    password = args.password or secrets.token_urlsafe(12)
    try:
        user = register_user(url, secret, args.name, password, admin=args.admin)
    except HomeserverError as exc:
        if "M_USER_IN_USE" in str(exc):
            print(f"synapse: @{args.name}:{SERVER_NAME} already exists; choose another NAME", file=sys.stderr)
        else:
            print(f"synapse: {exc}", file=sys.stderr)
        return 1
    print(user.user_id)
    print(f"Registered {user.user_id} on {url}" + ("" if args.password else f" with the password {password}"))
    return 0


def _running_url(directory: Path) -> str | None:
    """The client URL of the Synapse running from ``directory``, or None."""
    if _recorded_pid(directory) is None:
        return None
    try:
        overrides = yaml.safe_load((directory / _OVERRIDES).read_text())
        return str(overrides["public_baseurl"]).rstrip("/")
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


if __name__ == "__main__":
    sys.exit(main())
