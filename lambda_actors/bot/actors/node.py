"""The bot's supervision tree, and running it.

::

    node                    root supervisor (one_for_one)
    ├── outbox              every Matrix send (per-room order, txn ids, retries)
    ├── agents              one supervisor per configured agent: the isolation boundary
    │   └── <agent_id>      its connection actors, started on first use
    │       └── chat-<n>    one WebSocket per (agent, chat)
    ├── rooms               room actors, started on first use
    │   └── <room_id>
    └── sync                the /sync long-poll, filling the inbox

Children start in this order and stop in the reverse one, so on shutdown the
sync loop stops first (no new work), then rooms, then agent connections
(whose interrupted answers are told so), and the outbox last, which sends
what they queued. Policies come from ``supervision.toml``.
"""

from __future__ import annotations

from pathlib import Path
import structlog
import trio

from ..config import AgentsConfig, MatrixSettings
from ..logs import SecretMask
from ..store import Store
from ...matrix.client import MatrixClient
from ...runtime.spec import ChildSpec, SupervisorSpec
from ...runtime.supervision_config import SupervisionConfig
from ...runtime.supervisor import Supervisor, serve_supervisor
from .control import serve_control
from .outbox import outbox_actor
from .services import BotServices, Timing
from .sync import sync_actor

log = structlog.get_logger("lambda_actors.node")


def bot_children(bot: BotServices) -> list[ChildSpec | SupervisorSpec]:
    return [
        ChildSpec("outbox", outbox_actor, args=(bot.store, bot.client)),
        SupervisorSpec("agents", children=[SupervisorSpec(agent.id) for agent in bot.agents.agents]),
        SupervisorSpec("rooms"),
        ChildSpec("sync", sync_actor, args=(bot,)),
    ]


async def serve_node(
    bot: BotServices,
    config: SupervisionConfig | str | Path | None,
    *,
    task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the bot's tree until cancelled or until the root gives up.

    ``sup = await nursery.start(serve_node, bot, config)``; ``await
    sup.aclose()`` stops it in order.
    """
    await serve_supervisor(SupervisorSpec("node", bot_children(bot)), config, task_status=task_status)


#: The bot logs in as this device every time: transaction ids are scoped to
#: the device, so a send replayed after a restart is still recognised.
DEVICE_ID = "LAMBDA_ACTORS_BOT"


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
    task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Log in, run the tree until ``stop`` is set, then stop it in order.

    Raises :class:`~lambda_actors.matrix.errors.InvalidToken` when the
    homeserver refuses the credentials.
    """
    store = Store.open(Path(data_dir) / "bot.sqlite3")
    try:
        token = settings.access_token.reveal() if settings.access_token else None
        async with MatrixClient(settings.homeserver, access_token=token, user_id=settings.user_id) as client:
            if settings.password is not None:
                session = await client.login(settings.user_id, settings.password.reveal(), device_id=DEVICE_ID)
                if mask is not None:
                    mask.add(session.access_token)
            else:
                await client.whoami()
            bot = BotServices(store, client, agents, client.user_id or settings.user_id, timing)
            async with trio.open_nursery() as nursery:
                sup = await nursery.start(serve_node, bot, supervision)
                if control_socket is not None:
                    await nursery.start(serve_control, control_socket, sup)
                log.info("bot.started", user_id=bot.user_id, agents=[a.id for a in agents.agents])
                task_status.started(sup)
                await stop.wait()
                log.info("bot.stopping")
                await sup.aclose()
                nursery.cancel_scope.cancel()
    finally:
        store.close()
