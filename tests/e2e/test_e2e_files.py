"""End to end: files from the user to the agent and from the agent to the user."""

from harness.chat import onboard


async def test_a_staged_file_goes_to_the_agent_with_the_next_text(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    staged = await alice.answer(await alice.send_file(chat1, "notes.txt", b"twelve bytes"))
    assert "notes.txt is ready" in staged.text
    listed = await alice.answer(await alice.say(chat1, "!list"))
    assert "1. notes.txt" in listed.text
    answer = await alice.answer(await alice.say(chat1, "what did I send?"))
    # The fake agent opened the file in its workspace and reports its size.
    assert "notes.txt: 12 bytes" in answer.text
    saved = list((bot_stack.agents[0].workspace / "incoming").iterdir())
    assert [p.name.endswith("-notes.txt") for p in saved] == [True]
    assert saved[0].read_bytes() == b"twelve bytes"
    # The file went with that message and is no longer waiting.
    assert "No files are waiting" in (await alice.answer(await alice.say(chat1, "!list"))).text


async def test_same_name_files_do_not_overwrite_each_other(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    await alice.answer(await alice.send_file(chat1, "a.txt", b"first"))
    await alice.answer(await alice.send_file(chat1, "a.txt", b"second"))
    contents = sorted(p.read_bytes() for p in (bot_stack.agents[0].workspace / "incoming").iterdir())
    assert contents == [b"first", b"second"]


async def test_remove_drops_staged_files(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    await alice.answer(await alice.send_file(chat1, "a.txt", b"a"))
    await alice.answer(await alice.send_file(chat1, "b.txt", b"b"))
    assert "Removed a.txt" in (await alice.answer(await alice.say(chat1, "!remove 1"))).text
    assert "There is no file 5" in (await alice.answer(await alice.say(chat1, "!remove 5"))).text
    answer = await alice.answer(await alice.say(chat1, "go"))
    assert "b.txt" in answer.text and "a.txt" not in answer.text


async def test_a_file_from_the_agent_is_posted_to_the_room(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    answer = await alice.answer(await alice.say(chat1, "make a report [[file:report.txt]]"))
    [file_message] = answer.files
    assert file_message["msgtype"] == "m.file" and file_message["body"] == "report.txt"
    download = await alice.client.download(file_message["url"], max_bytes=1_000_000)
    written = (bot_stack.agents[0].workspace / "outbox" / "report.txt").read_bytes()
    assert download.data == written


async def test_an_agent_file_outside_its_workspace_is_refused(bot_stack):
    alice = await bot_stack.scripted_user("alice")
    _, chat1 = await onboard(bot_stack, alice)
    answer = await alice.answer(await alice.say(chat1, "steal [[escape]]"))
    assert answer.files == []
    refusal = await alice.notice(chat1, "tried to send a file I refused")
    assert "/etc/passwd" not in refusal.content["body"] or ".." in refusal.content["body"]
