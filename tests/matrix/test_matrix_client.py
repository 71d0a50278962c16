"""MatrixClient against the session's real Synapse: every operation the bot uses."""

from __future__ import annotations

import pytest
import structlog
from harness.synapse import SyncCursor

from lambda_actors.matrix import (
    BOT_SYNC_FILTER,
    Edit,
    FileMessage,
    Invite,
    InvalidMediaUrl,
    InvalidToken,
    MatrixClient,
    MatrixError,
    MatrixFailure,
    MediaTooLarge,
    Membership,
    OtherEvent,
    Reaction,
    RemoteMediaUnavailable,
    TextMessage,
    content,
    parse_events,
)


async def _room_with(owner: MatrixClient, guest: MatrixClient, **options) -> str:
    """A room created by *owner* that *guest* has joined."""
    room_id = await owner.create_room(invite=[guest.user_id], **options)
    await guest.join(room_id)
    return room_id


async def test_matrix_client_password_login_keeps_the_chosen_device(synapse, matrix_user, matrix_client):
    user = matrix_user("login")
    client = matrix_client(user)
    first = await client.login(user.user_id, user.password, device_id="LAMBDA_BOT")
    assert (first.user_id, first.device_id) == (user.user_id, "LAMBDA_BOT")
    assert first.access_token != user.access_token
    # The client now uses the new token: whoami reports the chosen device.
    assert await client.whoami() == (user.user_id, "LAMBDA_BOT")
    # A restarted bot logs in again with the same device id and stays that device.
    restarted = matrix_client(user)
    again = await restarted.login(user.user_id.split(":")[0][1:], user.password, device_id="LAMBDA_BOT")
    assert again.device_id == "LAMBDA_BOT"
    assert await restarted.whoami() == (user.user_id, "LAMBDA_BOT")


async def test_matrix_client_token_auth_uses_whoami(matrix_user, matrix_client):
    user = matrix_user()
    client = MatrixClient(matrix_client(user).homeserver_url, access_token=user.access_token)
    async with client:
        assert client.user_id is None
        assert await client.whoami() == (user.user_id, user.device_id)
        assert client.user_id == user.user_id and client.server_name == "localhost"


async def test_matrix_client_wrong_password_is_a_matrix_error(matrix_user, matrix_client):
    user = matrix_user()
    with pytest.raises(MatrixError) as refused:
        await matrix_client(user).login(user.user_id, "wrong", device_id="X")
    assert (refused.value.status, refused.value.errcode) == (403, "M_FORBIDDEN")


async def test_matrix_client_invalid_token_stops_with_one_clear_error(synapse):
    client = MatrixClient(synapse.url, access_token="syt_not_a_real_token")
    async with client:
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(InvalidToken) as first:
                await client.whoami()
            # Later calls fail the same way without asking the homeserver again,
            # and the failure is logged once, not once per call.
            with pytest.raises(InvalidToken):
                await client.sync(timeout_ms=0)
    assert first.value.errcode == "M_UNKNOWN_TOKEN" and first.value.status == 401
    assert "log in again" in str(first.value)
    assert [entry["event"] for entry in logs] == ["matrix.invalid_token"]
    assert logs[0]["log_level"] == "error"


async def test_matrix_client_sync_delivers_messages_in_order_with_a_stored_filter(matrix_user, matrix_client):
    bot, alice = matrix_client(matrix_user("bot")), matrix_client(matrix_user("alice"))
    room_id = await _room_with(bot, alice)
    filter_id = await bot.create_filter(BOT_SYNC_FILTER)
    cursor = await SyncCursor.start(bot, filter_id)
    for n in range(3):
        await alice.send(room_id, "m.room.message", content.text(f"hello {n}"), f"hello-{n}")
    await alice.send(room_id, "m.room.message", content.text("a notice", msgtype="m.notice"), "notice")
    await alice.send(room_id, "m.room.message", content.text("waves", msgtype="m.emote"), "emote")
    seen: list[TextMessage] = []
    while len(seen) < 5:
        batch = await cursor.next()
        assert batch.next_batch == cursor.since
        for room in batch.rooms:
            assert room.room_id == room_id
            seen.extend(event for event in room.timeline if isinstance(event, TextMessage))
    assert [(m.msgtype, m.body) for m in seen] == [
        ("m.text", "hello 0"),
        ("m.text", "hello 1"),
        ("m.text", "hello 2"),
        ("m.notice", "a notice"),
        ("m.emote", "waves"),
    ]
    assert all(m.sender == alice.user_id and m.room_id == room_id and m.origin_server_ts > 0 for m in seen)
    # Nothing new: a sync with no wait returns no events for the room.
    quiet = await cursor.next(timeout_ms=0)
    assert all(not room.timeline for room in quiet.rooms)


async def test_matrix_client_sync_parses_commands(matrix_user, matrix_client):
    bot, alice = matrix_client(matrix_user("bot")), matrix_client(matrix_user("alice"))
    room_id = await _room_with(bot, alice)
    cursor = await SyncCursor.start(bot)
    await alice.send(room_id, "m.room.message", content.text("!Rename  My chat "), "cmd")
    command = await cursor.wait_for(lambda e: isinstance(e, TextMessage) and e.body.startswith("!"))
    assert (command.body, command.sender) == ("!Rename  My chat ", alice.user_id)


async def test_matrix_client_send_with_the_same_transaction_id_posts_once(matrix_user, matrix_client):
    bot, alice = matrix_client(matrix_user("bot")), matrix_client(matrix_user("alice"))
    room_id = await _room_with(bot, alice)
    first = await bot.send(room_id, "m.room.message", content.text("once"), "txn-retry")
    again = await bot.send(room_id, "m.room.message", content.text("once"), "txn-retry")
    assert again == first
    page = await alice.messages(room_id, limit=20)
    events = parse_events(room_id, page["chunk"])
    assert [e.event_id for e in events if isinstance(e, TextMessage) and e.body == "once"] == [first]


async def test_matrix_client_edits_reach_others_as_replacements(matrix_user, matrix_client):
    bot, alice = matrix_client(matrix_user("bot")), matrix_client(matrix_user("alice"))
    room_id = await _room_with(bot, alice)
    cursor = await SyncCursor.start(alice)
    original = await bot.send(room_id, "m.room.message", content.text("thinking", msgtype="m.notice"), "answer")
    await bot.edit(room_id, original, content.text("the answer is 42", msgtype="m.notice"), "answer-edit-1")
    edit = await cursor.wait_for(lambda e: isinstance(e, Edit))
    assert (edit.target_event_id, edit.body, edit.msgtype) == (original, "the answer is 42", "m.notice")
    assert edit.sender == bot.user_id


async def test_matrix_client_reactions_are_received(matrix_user, matrix_client):
    bot, alice = matrix_client(matrix_user("bot")), matrix_client(matrix_user("alice"))
    room_id = await _room_with(bot, alice)
    cursor = await SyncCursor.start(bot)
    question = await bot.send(room_id, "m.room.message", content.text("Proceed?", msgtype="m.notice"), "ask")
    await alice.react(room_id, question, "✅", "react-1")
    reaction = await cursor.wait_for(lambda e: isinstance(e, Reaction))
    assert (reaction.key, reaction.target_event_id, reaction.sender) == ("✅", question, alice.user_id)


async def test_matrix_client_typing_is_seen_by_others(matrix_user, matrix_client):
    bot, alice = matrix_client(matrix_user("bot")), matrix_client(matrix_user("alice"))
    room_id = await _room_with(bot, alice)
    since = (await alice.sync(timeout_ms=0))["next_batch"]

    async def typing_users() -> list[str]:
        nonlocal since
        while True:
            body = await alice.sync(since, timeout_ms=5_000)
            since = body["next_batch"]
            room = body.get("rooms", {}).get("join", {}).get(room_id, {})
            for event in room.get("ephemeral", {}).get("events", []):
                if event["type"] == "m.typing":
                    return event["content"]["user_ids"]

    await bot.typing(room_id, True, timeout_ms=10_000)
    assert await typing_users() == [bot.user_id]
    await bot.typing(room_id, False)
    assert await typing_users() == []


async def test_matrix_client_invite_join_and_leave(matrix_user, matrix_client):
    bot, alice = matrix_client(matrix_user("bot")), matrix_client(matrix_user("alice"))
    cursor = await SyncCursor.start(bot)
    room_id = await alice.create_room(name="Alice's DM", invite=[bot.user_id], is_direct=True)
    invite = await cursor.wait_for(lambda e: isinstance(e, Invite))
    assert (invite.room_id, invite.sender, invite.is_direct) == (room_id, alice.user_id, True)
    assert invite.room_name == "Alice's DM" and invite.room_type is None and not invite.encrypted

    assert await bot.join(room_id) == room_id
    joined = await cursor.wait_for(
        lambda e: isinstance(e, Membership) and e.user_id == bot.user_id and e.membership == "join"
    )
    assert (joined.membership, joined.previous) == ("join", "invite")
    assert set(await alice.joined_members(room_id)) == {alice.user_id, bot.user_id}
    assert room_id in await bot.joined_rooms()

    await bot.invite(room_id, matrix_user("carol").user_id)  # joined members may invite in a private chat
    await bot.leave(room_id)
    assert set(await alice.joined_members(room_id)) == {alice.user_id}
    assert room_id not in await bot.joined_rooms()


async def test_matrix_client_declining_an_invite_is_a_leave(matrix_user, matrix_client):
    bot, alice = matrix_client(matrix_user("bot")), matrix_client(matrix_user("alice"))
    room_id = await alice.create_room(name="Group", invite=[bot.user_id])
    await bot.leave(room_id)
    cursor = await SyncCursor.start(alice)
    await alice.send(room_id, "m.room.message", content.text("ping"), "ping")  # wakes alice's sync
    members = await alice.room_state(room_id)
    bot_member = [e for e in members if isinstance(e, Membership) and e.user_id == bot.user_id]
    assert [m.membership for m in bot_member] == ["leave"]
    assert await cursor.wait_for(lambda e: isinstance(e, TextMessage))


async def test_matrix_client_spaces_link_children_both_ways(matrix_user, matrix_client):
    bot = matrix_client(matrix_user("bot"))
    await bot.whoami()
    space_id = await bot.create_space("Lambda — Alice")
    room_id = await bot.create_room(name="Chat 1")
    await bot.add_to_space(space_id, room_id)
    assert (await bot.get_state(space_id, "m.room.create"))["type"] == "m.space"
    assert "type" not in await bot.get_state(room_id, "m.room.create")
    assert await bot.get_state(space_id, "m.space.child", room_id) == {"via": ["localhost"], "suggested": False}
    assert await bot.get_state(room_id, "m.space.parent", space_id) == {"via": ["localhost"], "canonical": True}


async def test_matrix_client_custom_state_events_round_trip(matrix_user, matrix_client):
    bot = matrix_client(matrix_user("bot"))
    room_id = await bot.create_room(name="state")
    assert await bot.get_state(room_id, "cis.lambda.binding", "agent") is None
    event_id = await bot.put_state(room_id, "cis.lambda.binding", {"agent": "agent-0", "chat_id": 17}, "agent")
    assert event_id.startswith("$")
    assert await bot.get_state(room_id, "cis.lambda.binding", "agent") == {"agent": "agent-0", "chat_id": 17}
    state = await bot.room_state(room_id)
    [binding] = [e for e in state if isinstance(e, OtherEvent) and e.event_type == "cis.lambda.binding"]
    assert (binding.state_key, binding.content, binding.event_id) == ("agent", {"agent": "agent-0", "chat_id": 17}, event_id)


async def test_matrix_client_encrypted_rooms_are_recognised(matrix_user, matrix_client):
    bot, alice = matrix_client(matrix_user("bot")), matrix_client(matrix_user("alice"))
    room_id = await _room_with(alice, bot)  # alice owns it, so she may turn encryption on
    assert not await bot.is_encrypted(room_id)
    cursor = await SyncCursor.start(bot)
    await alice.put_state(room_id, "m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"})
    while True:
        batch = await cursor.next()
        if any(room.encrypted for room in batch.rooms if room.room_id == room_id):
            break
    assert await bot.is_encrypted(room_id)


async def test_matrix_client_history_pages_back_through_the_room(matrix_user, matrix_client):
    bot = matrix_client(matrix_user("bot"))
    room_id = await bot.create_room(name="history")
    sent = [await bot.send(room_id, "m.room.message", content.text(f"m{n}"), f"h{n}") for n in range(5)]
    seen: list[str] = []
    start = None
    while True:
        page = await bot.messages(room_id, start=start, limit=2, event_filter={"types": ["m.room.message"]})
        seen.extend(e.event_id for e in parse_events(room_id, page["chunk"]))
        if page.get("end") is None or not page["chunk"]:
            break
        start = page["end"]
    assert seen == sent[::-1]
    forward = await bot.messages(room_id, start=page["start"], direction="f", limit=3)
    assert forward["chunk"]  # paging forward from the beginning finds the room's first events


async def test_matrix_client_upload_then_authenticated_download(matrix_user, matrix_client):
    bot, alice = matrix_client(matrix_user("bot")), matrix_client(matrix_user("alice"))
    room_id = await _room_with(bot, alice)
    data = bytes(range(256)) * 40
    mxc = await alice.upload(data, "application/pdf", "report 1.pdf")
    assert mxc.startswith("mxc://localhost/")
    cursor = await SyncCursor.start(bot)
    await alice.send(room_id, "m.room.message", content.file_message(mxc, "report 1.pdf", mimetype="application/pdf", size=len(data)), "f1")
    message = await cursor.wait_for(lambda e: isinstance(e, FileMessage))
    assert (message.msgtype, message.url, message.filename, message.mimetype, message.size) == (
        "m.file", mxc, "report 1.pdf", "application/pdf", len(data)
    )
    download = await bot.download(message.url, max_bytes=len(data))
    assert download.data == data
    assert download.content_type == "application/pdf" and download.filename == "report 1.pdf"


async def test_matrix_client_download_refuses_files_over_the_limit(matrix_user, matrix_client):
    bot = matrix_client(matrix_user("bot"))
    mxc = await bot.upload(b"x" * 10_000, "text/plain", "big.txt")
    with pytest.raises(MediaTooLarge) as refused:
        await bot.download(mxc, max_bytes=9_999)
    assert "9999-byte limit" in str(refused.value)
    with pytest.raises(MatrixError) as missing:
        await bot.download("mxc://localhost/doesnotexist", max_bytes=100)
    assert missing.value.errcode == "M_NOT_FOUND"


async def test_matrix_client_malformed_or_unfetchable_media_is_a_matrix_failure(matrix_user, matrix_client):
    """What a hostile or broken m.file may carry, against the real homeserver:
    every outcome is a MatrixFailure with a message a user can read."""
    bot = matrix_client(matrix_user("bot"))
    for url in ("mxc://localhost", "mxc:///abc", "https://example.org/cat.png"):
        with pytest.raises(InvalidMediaUrl, match="cannot be fetched"):
            await bot.download(url, max_bytes=100)
    # Well formed, but held by a server that cannot be reached: Synapse's
    # federation fetch fails and it answers 502, once (it tried itself).
    with pytest.raises(RemoteMediaUnavailable) as remote:
        await bot.download("mxc://127.0.0.1:1/abcdef", max_bytes=100)
    assert isinstance(remote.value, MatrixFailure) and remote.value.status == 502
    assert str(remote.value).isprintable()


async def test_matrix_client_a_unique_filter_makes_a_first_sync_of_now_not_a_cached_one(matrix_user, matrix_client):
    # A process restarted within Synapse's sync cache time asks the same
    # first sync again; with a unique filter it must see the room as it is
    # now, not its previous run's answer (issue 15: a node back from the dead
    # re-read old "offline" events as new and took a run from a live node).
    alice = matrix_client(matrix_user("alice"))
    room_id = await alice.create_room(name="first syncs")
    definition = {"room": {"rooms": [room_id], "timeline": {"limit": 50}}, "account_data": {"types": []}}

    async def first_sync_states() -> tuple[list[str], str]:
        filter_id = await alice.create_filter(definition, unique=True)
        body = await alice.sync(None, timeout_ms=0, filter_id=filter_id)
        timeline = body["rooms"]["join"][room_id]["timeline"]["events"]
        return [e["content"]["status"] for e in timeline if e["type"] == "cis.node.status"], body["next_batch"]

    await alice.put_state(room_id, "cis.node.status", {"status": "offline"}, "node-b")
    before, token_before = await first_sync_states()
    await alice.put_state(room_id, "cis.node.status", {"status": "online"}, "node-b")
    after, token_after = await first_sync_states()
    assert (before, after) == (["offline"], ["offline", "online"])
    assert token_after != token_before
