"""A small seeded chaos run: nothing lost, nothing duplicated, while everything is killed.

The same run as ``lambda-actors chaos`` (docs/chaos.md), scaled down: the
bot is a real child process that is SIGKILLed, its agent connection actors
are killed through its control socket, a fake agent dies and comes back,
agents misbehave and flood frames, a room is poisoned and flooded, and an
agent is removed from agents.yaml between two runs of the bot. Homeserver
outages need a Synapse of the run's own and are left to the full run (and
to ``test_e2e_seams.py``): this one shares the test session's. The latency
figures are not asserted (they depend on the machine); the counts are.
"""

from lambda_actors.agent.fake import MODES
from lambda_actors.bot.actors.services import ERROR_SET_ASIDE
from lambda_actors.loopback.chaos import FRAME_FLOOD, ChaosOptions, run_chaos

#: Sized for the suite's time: 24 s of chaos holds every fault class asserted
#: below (kills at the rate of the 40 s run this was cut from, both bot
#: kills, the agent restart, the poisoned and flooded room, the frame floods,
#: the agent removed at 60% of the phase); 10 messages a user in it leave
#: the removed agent's user 3 or 4 messages after the bot is back, of which
#: one answered is asserted.
SMALL = ChaosOptions(
    users=5,
    agents=3,
    untouched_agents=1,
    calm_messages=2,
    calm_duration=3.0,
    messages=10,
    duration=24.0,
    agent_kills=8,
    bot_kills=2,
    agent_restarts=1,
    misbehaviours=5,
    token_fraction=0.2,
    homeserver_outages=0,
    poisoned=1,
    flood=20,
    frame_floods=2,
    settle=90.0,
    seed=6,
)


async def test_a_small_chaos_run_loses_and_duplicates_nothing(synapse, tmp_path):
    lines: list[str] = []
    report = await run_chaos(tmp_path, SMALL, homeserver=synapse, write=lines.append)
    summary = "\n".join(lines + report.lines())
    # The chaos really happened ...
    assert report.bot_kills == SMALL.bot_kills, summary
    assert report.agent_kills >= SMALL.agent_kills // 2, summary
    assert report.agent_restarts == SMALL.agent_restarts, summary
    assert report.misbehaviours == SMALL.misbehaviours, summary
    assert report.frame_floods == (SMALL.frame_floods if FRAME_FLOOD in MODES else 0), summary
    assert report.supervision["crashes"] >= report.agent_kills, summary
    assert report.agent_removed == "agent-2 -> agent-1", summary
    # ... every message was sent and got exactly one finished answer or error notice ...
    assert report.sent == SMALL.users * (SMALL.calm_messages + SMALL.messages) + SMALL.poisoned + SMALL.flood, summary
    assert report.lost == 0, summary
    assert report.duplicated == 0, summary
    assert report.wrong == 0, summary
    assert report.answered + report.errors == report.sent, summary
    assert report.untouched_errors == 0, summary
    assert report.bot_exits == 0 and report.bot_exit_status == 0, summary
    # ... the poisoned message was set aside (its kind read from the notice's
    # content), the flood into its room was worked through (each message
    # answered, or failed by the chaos on its agent: none lost), the retired
    # agent's rooms answered by the new one, and no agent parked for Matrix's faults.
    assert (report.poisoned, report.poisoned_answered) == (SMALL.poisoned, SMALL.poisoned), summary
    assert report.error_kinds.get(ERROR_SET_ASIDE) == SMALL.poisoned, summary
    assert report.flood == SMALL.flood and report.flood_answered > 0, summary
    assert report.agent_removed_messages > 0 and report.agent_removed_answered > 0, summary
    assert report.agents_parked_by_matrix == 0, summary
    assert report.errors_without_kind == 0, summary
    assert report.ok, summary
