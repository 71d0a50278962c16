"""The bot's supervision tree, and running it.

::

    node                    root supervisor (one_for_one)
    ├── outbox              every Matrix send (per-room order, txn ids, retries)
    ├── agents              one supervisor per agent (configured or registered): the isolation boundary
    │   └── <agent_id>      its connection actors, started on first use
    │       └── chat-<n>    one WebSocket per (agent, chat)
    ├── approvals           the node's approval decisions (API requests, agent confirmations)
    ├── approval-callbacks  their signed callbacks
    ├── rooms               room actors, started on first use
    │   └── <room_id>
    ├── sync                the /sync long-poll, filling the inbox
    └── http                the node's HTTP API (--http; lambda_actors/node)

Children start in this order and stop in the reverse one, so on shutdown the
sync loop stops first (no new work), then rooms, then agent connections
(whose interrupted answers are told so), and the outbox last, which sends
what they queued. Policies come from ``supervision.toml``.

Starting (:func:`run_bot`) checks everything an operator can get wrong
before the tree starts, and each such problem is a :class:`StartupError`
carrying the process exit status and a message saying what to do:

- a local path the bot cannot use (``--data-dir``, ``--control-socket``,
  the database): :class:`PathUnusable`, status 5;
- a homeserver that does not answer for ``homeserver_wait`` seconds:
  :class:`HomeserverUnreachable`, status 4 (each failed try logs a warning
  naming the URL);
- credentials the homeserver refuses: :class:`CredentialsRefused`, status 3.

The session. With a password the bot logs in once as the fixed device
:data:`DEVICE_ID` and keeps the access token in ``<data-dir>/session.json``
(mode 0600); later starts reuse it for as long as the homeserver accepts it
(``whoami``), and only log in again when it does not. So restarting the bot
never piles up valid tokens: ten starts leave one.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog
import trio

from ..config import AgentsConfig, MatrixSettings
from ..logs import SecretMask
from ..room_rules import drifted_bindings
from ..store import Store, StoreError
from ...matrix.client import MatrixClient
from ...matrix.errors import HomeserverUnavailable, InvalidToken, MatrixError, RateLimited
from ...runtime.spec import ChildSpec, SupervisorSpec
from ...runtime.supervision_config import SupervisionConfig
from ...runtime.supervisor import Supervisor, serve_supervisor
from ...node.config import Listen, NodeConfig
from ...approvals.store import ApprovalStore
from ...node.tree import NodeParts, agent_directory, open_approval_store
from .control import serve_control
from .outbox import outbox_actor
from .services import BotServices, Timing
from .sync import sync_actor

log = structlog.get_logger("lambda_actors.node")

__all__ = [
    "DEVICE_ID",
    "SESSION_FILE",
    "CredentialsRefused",
    "HomeserverUnreachable",
    "PathUnusable",
    "StartupError",
    "bot_children",
    "run_bot",
    "serve_node",
]


def bot_children(bot: BotServices, node: NodeParts | None = None) -> list[ChildSpec | SupervisorSpec]:
    """The tree's children in start order (they stop in the reverse one).

    With ``node`` (the HTTP API and approvals, :mod:`lambda_actors.node.tree`)
    its actors go after the outbox and before the rooms, which ask them
    about answers, and its listener last, so it stops first.
    """
    return [
        ChildSpec("outbox", outbox_actor, args=(bot.store, bot.client, bot.counters)),
        *(node.first() if node else []),
        SupervisorSpec("agents", children=[SupervisorSpec(agent.id) for agent in bot.agents.agents]),
        SupervisorSpec("rooms"),
        ChildSpec("sync", sync_actor, args=(bot,)),
        *(node.last() if node else []),
    ]


async def serve_node(
    bot: BotServices,
    config: SupervisionConfig | str | Path | None,
    node: NodeParts | None = None,
    *,
    task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the bot's tree until cancelled or until the root gives up.

    ``sup = await nursery.start(serve_node, bot, config)``; ``await
    sup.aclose()`` stops it in order.
    """
    await serve_supervisor(SupervisorSpec("node", bot_children(bot, node)), config, task_status=task_status)


#: The bot logs in as this device every time: transaction ids are scoped to
#: the device, so a send replayed after a restart is still recognised.
DEVICE_ID = "LAMBDA_ACTORS_BOT"

#: The saved session (access token) in the data directory.
SESSION_FILE = "session.json"

#: How long an unreachable homeserver is retried at start before giving up.
DEFAULT_HOMESERVER_WAIT = 15.0


class StartupError(Exception):
    """The bot cannot start, for a reason the operator can fix.

    ``status`` is the exit status of ``lambda-actors run``; the message says
    what is wrong and what to do, in one or two lines.
    """

    status = 1


class CredentialsRefused(StartupError):
    """The homeserver refused the password or the access token."""

    status = 3


class HomeserverUnreachable(StartupError):
    """No usable answer from the homeserver within the start-up wait."""

    status = 4


class PathUnusable(StartupError):
    """A local file or folder the bot needs cannot be used."""

    status = 5


async def run_bot(
    settings: MatrixSettings,
    agents: AgentsConfig,
    supervision: SupervisionConfig | str | Path | None,
    data_dir: Path,
    stop: trio.Event,
    *,
    mask: SecretMask | None = None,
    timing: Timing = Timing(),
    control_socket: Path | None = None,
    faults: frozenset[str] = frozenset(),
    homeserver_wait: float = DEFAULT_HOMESERVER_WAIT,
    node: NodeConfig | None = None,
    http: Listen | None = None,
    task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Log in, run the tree until ``stop`` is set, then stop it in order.

    The tree always runs the node's approvals: an agent's confirmation is
    one of their records (SPEC 7.1), so a bot embedded without ``node``
    (tests, benchmarks) runs them with node.toml's defaults. ``http`` adds
    the HTTP API (SPEC section 7).

    Raises a :class:`StartupError` (before anything is started) when a path,
    the homeserver, the credentials or the HTTP address are unusable; see
    the module docstring.
    """
    data_dir = Path(data_dir)
    prepare_data_dir(data_dir)
    if control_socket is not None:
        check_control_socket(Path(control_socket))
    store = open_store(data_dir)
    approvals: ApprovalStore | None = None
    parts: NodeParts | None = None
    try:
        approvals = open_approval_store(data_dir / DATABASE_FILE)
        # agents.yaml's agents and those registered through the API (SPEC 7.2).
        directory = agent_directory(agents, approvals)
        # Rooms bound to an agent agents.yaml no longer has: one line here;
        # each room tells its owner on their next message (room_rules, rule 7).
        if drifted := drifted_bindings(store.bindings(), directory):
            log.warning(
                "bot.rooms_of_removed_agents",
                rooms=len(drifted),
                agents=sorted({b.agent_id for b in drifted}),
                advice="each room tells its owner on their next message and continues with the owner's agent now, if any",
            )
        await wait_for_homeserver(settings.homeserver, homeserver_wait)
        token, user_id, device_id = await open_session(settings, data_dir)
        if mask is not None:
            mask.add(token)
        async with MatrixClient(settings.homeserver, access_token=token, user_id=user_id, device_id=device_id) as client:
            if http is not None:
                # Checked last before the tree starts: a port taken is exit 5,
                # after the homeserver and the credentials had their say.
                check_listen(http)
            bot = BotServices(store, client, directory, user_id, timing, faults=faults, approvals=approvals)
            parts = NodeParts.build(bot, node or NodeConfig(), http)
            async with trio.open_nursery() as nursery:
                sup = await nursery.start(serve_node, bot, supervision, parts)
                if control_socket is not None:
                    try:
                        await nursery.start(serve_control, Path(control_socket), sup, store)
                    except OSError as exc:
                        await sup.aclose()
                        raise PathUnusable(
                            f"--control-socket {control_socket}: cannot listen there ({exc.strerror}); "
                            "choose a path in a folder this user may write to"
                        ) from None
                log.info("bot.started", user_id=bot.user_id, agents=[a.id for a in directory.agents], faults=sorted(faults))
                task_status.started(sup)
                await stop.wait()
                log.info("bot.stopping")
                await sup.aclose()
                nursery.cancel_scope.cancel()
            log.info("bot.stopped")
    finally:
        if parts is not None and parts.dag is not None:
            parts.dag.close()
        if approvals is not None:
            approvals.close()
        store.close()


# -- local paths ---------------------------------------------------------------------


def prepare_data_dir(data_dir: Path) -> None:
    """Create the data directory 0700 (or check an existing one); PathUnusable if it cannot be used."""
    where = f"--data-dir {data_dir}"
    if data_dir.exists() and not data_dir.is_dir():
        raise PathUnusable(f"{where}: is a file, not a folder; give a folder for the bot's state (it is created if missing)")
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(data_dir.stat().st_mode)
    except OSError as exc:
        raise PathUnusable(f"{where}: cannot be created ({exc.strerror}); create it or choose a folder this user may write to") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise PathUnusable(f"{where}: this user may not write there; fix its owner or permissions, or choose another folder")
    if mode & 0o077:
        # The folder holds every user's messages and the bot's access token.
        log.warning(
            "data_dir.too_open",
            path=str(data_dir),
            mode=oct(mode),
            advice=f"other users may look inside; run: chmod 700 {data_dir}",
        )


def check_listen(listen: Listen) -> None:
    """PathUnusable (exit 5) when the HTTP API cannot listen where asked.

    Checked before the tree starts, so a port already taken is one line at
    start and not a listener restarting in the background.
    """
    try:
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((listen.host, listen.port))
    except OSError as exc:
        raise PathUnusable(
            f"--http {listen}: cannot listen there ({exc.strerror}); "
            "choose another address with --http HOST:PORT, or --http off"
        ) from None


#: The database in the data directory (the approvals share it).
DATABASE_FILE = "bot.sqlite3"


def open_store(data_dir: Path) -> Store:
    path = data_dir / DATABASE_FILE
    try:
        return Store.open(path)
    except StoreError as exc:
        raise PathUnusable(f"{path}: {exc}") from None
    except (OSError, sqlite3.Error) as exc:
        raise PathUnusable(
            f"{path}: the database cannot be opened ({exc}); check that it is a bot database this user may write, "
            "or move it away to start afresh (the bot rebuilds its rooms from Matrix)"
        ) from None


# The kernel's limit for a Unix socket path (sun_path), with its final NUL.
_MAX_SOCKET_PATH = 107


def check_control_socket(path: Path) -> None:
    """PathUnusable unless a Unix socket can be made at ``path``.

    A file already there is replaced only if it is a socket (a stale one from
    an earlier run); anything else is the operator's and is left alone.
    """
    where = f"--control-socket {path}"
    parent = path.absolute().parent
    if not parent.is_dir():
        raise PathUnusable(f"{where}: the folder {parent} does not exist; create it or choose a path in an existing folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PathUnusable(f"{where}: this user may not create files in {parent}; choose a folder it may write to")
    if len(os.fsencode(str(path))) > _MAX_SOCKET_PATH:
        raise PathUnusable(f"{where}: longer than {_MAX_SOCKET_PATH} bytes, the limit for a Unix socket; choose a shorter path")
    try:
        existing = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PathUnusable(f"{where}: cannot be checked ({exc.strerror}); choose another path") from None
    if not stat.S_ISSOCK(existing.st_mode):
        raise PathUnusable(f"{where}: something that is not a socket is already there; remove it or choose another path")


# -- the homeserver and the session ---------------------------------------------------


async def wait_for_homeserver(url: str, patience: float) -> None:
    """Return once the homeserver's client API answers; HomeserverUnreachable after ``patience`` seconds.

    Each failed try logs a warning naming the URL, so an operator watching the
    log sees at once which address the bot is trying.
    """
    probe = f"{url}/_matrix/client/versions"
    deadline = trio.current_time() + patience
    delay = 0.5
    tries = 0
    async with httpx.AsyncClient(timeout=httpx.Timeout(5.0), follow_redirects=True) as http:
        while True:
            tries += 1
            try:
                response = await http.get(probe)
            except httpx.HTTPError as exc:
                problem = _describe_transport(exc)
            else:
                if response.status_code == 200 and _is_versions(response):
                    return
                if response.status_code < 500:
                    raise HomeserverUnreachable(
                        f"MATRIX_HOMESERVER {url}: answered HTTP {response.status_code} without a Matrix client API at "
                        "/_matrix/client/versions; set it to the homeserver's base URL (as Element's 'homeserver' field)"
                    )
                problem = f"HTTP {response.status_code}"
            left = deadline - trio.current_time()
            if left <= 0:
                raise HomeserverUnreachable(
                    f"MATRIX_HOMESERVER {url}: no answer from the homeserver in {patience:g} s ({tries} tries, last: "
                    f"{problem}); check the URL and that the homeserver is running and reachable from this host"
                )
            wait = min(delay, left)
            log.warning("homeserver.unreachable", url=url, problem=problem, attempt=tries, retry_in_s=round(wait, 1))
            await trio.sleep(wait)
            delay = min(delay * 2, 4.0)


def _is_versions(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("versions"), list)


def _describe_transport(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host not found"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return type(exc).__name__


@dataclass(frozen=True)
class _Saved:
    homeserver: str
    user_id: str
    device_id: str
    access_token: str


async def open_session(settings: MatrixSettings, data_dir: Path) -> tuple[str, str, str | None]:
    """The access token to use, with the user id and device id it belongs to.

    A configured access token is checked with ``whoami``. With a password the
    token saved by an earlier start is reused while the homeserver accepts
    it; otherwise the bot logs in (as :data:`DEVICE_ID`) and saves the new
    one in place of the old.
    """
    if settings.access_token is not None:
        token = settings.access_token.reveal()
        user_id, device_id = await _whoami(settings, token, "MATRIX_ACCESS_TOKEN")
        return token, user_id, device_id
    assert settings.password is not None
    path = data_dir / SESSION_FILE
    saved = _read_session(path, settings)
    if saved is not None:
        try:
            user_id, device_id = await _whoami(settings, saved.access_token, "the saved session")
        except CredentialsRefused as exc:
            log.info("session.expired", path=str(path), reason=str(exc).split(";")[0])
        else:
            log.info("session.reused", path=str(path), device_id=device_id)
            return saved.access_token, user_id, device_id
    async with MatrixClient(settings.homeserver) as client:
        try:
            session = await client.login(settings.user_id, settings.password.reveal(), device_id=DEVICE_ID)
        except HomeserverUnavailable as exc:
            raise _unreachable(settings, exc) from None
        except RateLimited as exc:
            # Not a verdict on the password: the homeserver wants a pause
            # longer than the client waits by itself.
            raise HomeserverUnreachable(
                f"MATRIX_HOMESERVER {settings.homeserver}: asks the bot to wait {exc.retry_after_s:.0f} s before "
                "logging in again (too many logins); start the bot again after that"
            ) from None
        except MatrixError as exc:
            raise CredentialsRefused(
                f"the homeserver refused the login of MATRIX_USER_ID {settings.user_id} ({exc.errcode}: {exc.message}); "
                "check MATRIX_PASSWORD (or MATRIX_PASSWORD_FILE) and MATRIX_USER_ID"
            ) from None
    try:
        _write_session(path, _Saved(settings.homeserver, session.user_id, session.device_id, session.access_token))
    except OSError as exc:
        raise PathUnusable(
            f"{path}: the session cannot be saved ({exc.strerror}); check that --data-dir is writable and not full"
        ) from None
    log.info("session.logged_in", path=str(path), device_id=session.device_id)
    return session.access_token, session.user_id, session.device_id


async def _whoami(settings: MatrixSettings, token: str, what: str) -> tuple[str, str | None]:
    async with MatrixClient(settings.homeserver, access_token=token) as client:
        try:
            user_id, device_id = await client.whoami()
        except HomeserverUnavailable as exc:
            raise _unreachable(settings, exc) from None
        except InvalidToken as exc:
            raise CredentialsRefused(
                f"the homeserver does not accept {what} ({exc.errcode}); "
                "give a valid MATRIX_ACCESS_TOKEN of the bot, or use MATRIX_PASSWORD instead"
            ) from None
        except MatrixError as exc:
            raise CredentialsRefused(
                f"the homeserver refused {what} ({exc.errcode}: {exc.message}); check MATRIX_ACCESS_TOKEN"
            ) from None
    if user_id != settings.user_id:
        raise CredentialsRefused(
            f"{what} belongs to {user_id}, not to MATRIX_USER_ID {settings.user_id}; "
            "use the bot's own token, or set MATRIX_USER_ID to the account it belongs to"
        )
    return user_id, device_id


def _unreachable(settings: MatrixSettings, exc: HomeserverUnavailable) -> HomeserverUnreachable:
    return HomeserverUnreachable(
        f"MATRIX_HOMESERVER {settings.homeserver}: stopped answering while the bot logged in ({exc}); "
        "check that the homeserver is running, then start the bot again"
    )


def _read_session(path: Path, settings: MatrixSettings) -> _Saved | None:
    """The saved session if it is for this homeserver and user; None (logged) if unusable."""
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
        saved = _Saved(**{k: raw[k] for k in ("homeserver", "user_id", "device_id", "access_token")})
        if not all(isinstance(v, str) and v for v in vars(saved).values()):
            raise ValueError("empty or non-text fields")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("session.unreadable", path=str(path), problem=type(exc).__name__, advice="logging in again")
        return None
    if (saved.homeserver, saved.user_id) != (settings.homeserver, settings.user_id):
        # Another account or homeserver than configured now: not ours to use.
        log.info("session.other_account", path=str(path), user_id=saved.user_id)
        return None
    return saved


def _write_session(path: Path, saved: _Saved) -> None:
    """Write the session file 0600, atomically (a crash leaves the old one or the new one)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(vars(saved), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
