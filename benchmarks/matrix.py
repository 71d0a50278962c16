"""How much the Matrix layer costs on top of plain HTTP, against a real local Synapse.

    .venv/bin/python benchmarks/matrix.py [--sends N] [--rounds R] [--json]

- Send rate: ``MatrixClient.send`` one after another, against a bare httpx
  loop doing the same PUTs (same room, same user, same connection pooling) in
  the same run. The two alternate in rounds so that drift in Synapse's speed
  (it is the bottleneck) hits both alike. Goal: ratio >= 0.9.
- Parse cost: ``parse_sync`` on a real sync answer from that room, per event,
  next to nio's ``SyncResponse.from_dict`` on the same body for reference.

It starts (and stops) its own Synapse through ``lambda_actors.loopback.homeserver``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from typing import Any

import httpx
import nio
import trio

from lambda_actors.loopback.homeserver import register_user, start_synapse, stop_synapse
from lambda_actors.matrix import MatrixClient, content, parse_sync


async def _layer_sends(client: MatrixClient, room_id: str, prefix: str, count: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        await client.send(room_id, "m.room.message", content.text(f"layer {n}"), f"{prefix}-{n}")
    return time.perf_counter() - started


async def _bare_sends(http: httpx.AsyncClient, url: str, token: str, room_id: str, prefix: str, count: int) -> float:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    quoted_room = httpx.URL(f"/{room_id}").raw_path.decode().lstrip("/")
    started = time.perf_counter()
    for n in range(count):
        body = json.dumps({"msgtype": "m.text", "body": f"bare {n}"}).encode()
        response = await http.put(
            f"{url}/_matrix/client/v3/rooms/{quoted_room}/send/m.room.message/{prefix}-{n}", content=body, headers=headers
        )
        response.raise_for_status()
        response.json()["event_id"]
    return time.perf_counter() - started


def _per_event_us(parse: Any, body: dict[str, Any], events: int, min_seconds: float = 0.5) -> float:
    runs = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < min_seconds or runs < 3:
        parse(body)
        runs += 1
    return elapsed / (runs * events) * 1e6


async def run(sends: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lambda-bench-synapse-") as directory:
        server = start_synapse(directory)
        try:
            user = register_user(server.url, server.registration_shared_secret, "bench", "bench-password")
            async with MatrixClient(
                server.url, access_token=user.access_token, user_id=user.user_id, device_id=user.device_id
            ) as client, httpx.AsyncClient(timeout=60) as http:
                room_id = await client.create_room(name="benchmark")
                await _layer_sends(client, room_id, "warm-layer", 20)
                await _bare_sends(http, server.url, user.access_token, room_id, "warm-bare", 20)
                layer_s = bare_s = 0.0
                for r in range(rounds):
                    layer_s += await _layer_sends(client, room_id, f"layer-{r}", sends)
                    bare_s += await _bare_sends(http, server.url, user.access_token, room_id, f"bare-{r}", sends)

                body = await client.sync(timeout_ms=0, filter_id=await client.create_filter())
        finally:
            stop_synapse(directory)

    events = sum(len(room.timeline) + len(room.state) for room in parse_sync(body).rooms)
    send_per_s = sends * rounds / layer_s
    bare_send_per_s = sends * rounds / bare_s
    return {
        "sends": sends * rounds,
        "send_per_s": round(send_per_s, 1),
        "bare_send_per_s": round(bare_send_per_s, 1),
        "send_ratio": round(send_per_s / bare_send_per_s, 3),
        "parse_events": events,
        "parse_us_per_event": round(_per_event_us(parse_sync, body, events), 2),
        "nio_parse_us_per_event": round(_per_event_us(nio.SyncResponse.from_dict, body, events), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=100, help="sends per round and per side (default 100)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = trio.run(run, args.sends, args.rounds)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"sequential sends ({result['sends']} each, same Synapse, same run)")
    print(f"  MatrixClient.send   {result['send_per_s']:8.1f} /s")
    print(f"  bare httpx PUT      {result['bare_send_per_s']:8.1f} /s")
    print(f"  ratio               {result['send_ratio']:8.3f}   (goal >= 0.9)")
    print(f"sync parsing ({result['parse_events']} events of a real sync answer)")
    print(f"  parse_sync          {result['parse_us_per_event']:8.2f} µs/event")
    print(f"  nio SyncResponse    {result['nio_parse_us_per_event']:8.2f} µs/event (reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
