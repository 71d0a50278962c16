"""A small seeded chaos run: nothing lost, nothing duplicated, while everything is killed.

The same run as ``lambda-actors chaos`` (docs/chaos.md), scaled down to
about a minute: the bot is a real child process that is SIGKILLed, its
agent connection actors are killed through its control socket, a fake agent
dies and comes back, and agents misbehave. The latency figures are not
asserted (they depend on the machine); the counts are.
"""

from lambda_actors.loopback.chaos import ChaosOptions, run_chaos

SMALL = ChaosOptions(
    users=4,
    agents=2,
    untouched_agents=1,
    calm_messages=3,
    calm_duration=6.0,
    messages=10,
    duration=30.0,
    agent_kills=12,
    bot_kills=2,
    agent_restarts=1,
    misbehaviours=5,
    token_fraction=0.2,
    settle=60.0,
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
    assert report.supervision["crashes"] >= report.agent_kills, summary
    # ... every message was sent and got exactly one finished answer or error notice.
    assert report.sent == SMALL.users * (SMALL.calm_messages + SMALL.messages), summary
    assert report.lost == 0, summary
    assert report.duplicated == 0, summary
    assert report.wrong == 0, summary
    assert report.answered + report.errors == report.sent, summary
    assert report.untouched_errors == 0, summary
    assert report.bot_exits == 0 and report.bot_exit_status == 0, summary
