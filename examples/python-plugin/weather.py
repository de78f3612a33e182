#!/usr/bin/env python3
"""A Nexus tool plugin in Python: the tool `weather`, served over NATS in the JSON
encoding of the tool protocol (proto/TOOL_PROTOCOL.md, protocol 1).

The weather is made up from the city's name, so the example needs no network and
always gives the same answer. Put your own work in `weather()`; the rest is the
protocol: announce, answer discover, serve calls in a queue group, withdraw on stop.

    NATS_URL=nats://127.0.0.1:4222 NEXUS_NAMESPACE=nexus python3 weather.py
"""

import asyncio
import json
import os
import signal
import sys
import time
import uuid
import zlib

import nats

NAMESPACE = os.environ.get("NEXUS_NAMESPACE", "nexus")
PROVIDER = "weather-py"  # replicas share it, and with it the queue group
VERSION = "0.1.0"
INSTANCE = uuid.uuid4().hex  # new for every process, so replicas are told apart
ANNOUNCE_EVERY = 2.0  # seconds
TTL_MS = 6000  # three periods: two lost announcements do not make the tool vanish
MAX_OUTPUT = 32 * 1024  # bytes of UTF-8 the caller expects at most
JSON_HEADERS = {"Content-Type": "application/json"}

SPEC = {
    "name": "weather",
    "description": "The current weather in a city: temperature in °C and the sky.",
    "parameters": {  # JSON Schema of the arguments; the model sees it
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": 'The city, e.g. "Paris"'}
        },
        "required": ["city"],
        "additionalProperties": False,
    },
    "requires_approval": False,
    "timeout_ms": 5000,  # we answer within this; the caller waits 2 s longer
}

SKIES = ["clear", "partly cloudy", "overcast", "light rain", "snow"]


def log(*words):
    print(f"{PROVIDER} {INSTANCE[:8]}:", *words, file=sys.stderr, flush=True)


class ToolError(Exception):
    def __init__(self, kind, message, retryable=False):
        super().__init__(message)
        self.kind, self.message, self.retryable = kind, message, retryable


def weather(args):
    """The tool itself. Arguments come from the model: check them."""
    city = args.get("city")
    if not isinstance(city, str) or not city.strip():
        raise ToolError("invalid_args", 'Name the city as a string, e.g. {"city": "Paris"}.')
    city = city.strip()
    n = zlib.crc32(city.lower().encode())
    return f"{city}: {n % 35 - 5} °C, {SKIES[n // 35 % len(SKIES)]}"


def failure(kind, message, retryable=False):
    return {"error": {"kind": kind, "message": message, "retryable": retryable}}


async def answer(call):
    """One call (a parsed JSON object) → the outcome: {"output": …} or {"error": …}."""
    context = call.get("context") or {}  # who is calling: set by agent-core, not the model
    if SPEC["requires_approval"] and not context.get("approved"):
        raise ToolError("needs_approval", f"{SPEC['name']} needs the user's yes first.")
    args = call.get("arguments") or {}  # absent or "" means no arguments
    if not isinstance(args, dict):  # the model wrote something that is not an object
        raise ToolError("invalid_args", "The arguments must be a JSON object.")
    try:
        # A thread keeps a slow tool from blocking the announcements (on a timeout
        # the thread is left to finish on its own; its result is dropped).
        work = asyncio.to_thread(weather, args)
        text = await asyncio.wait_for(work, SPEC["timeout_ms"] / 1000)
    except asyncio.TimeoutError:
        message = f"No answer within {SPEC['timeout_ms']} ms."
        raise ToolError("timeout", message, retryable=True) from None
    data = text.encode()
    if len(data) <= MAX_OUTPUT:
        return {"output": text, "truncated": False}
    cut = data[: MAX_OUTPUT - 100].decode(errors="ignore")
    return {"output": cut + "\n[output truncated]", "truncated": True}


async def main():
    nc = nats.NATS()
    stopping = asyncio.Event()

    async def announce(withdrawn=False):
        if stopping.is_set() and not withdrawn:
            return  # never re-announce once stopping: the withdrawal is the last word
        body = {
            "protocol": 1,
            "provider": PROVIDER,
            "instance": INSTANCE,
            "version": VERSION,
            "specs": [] if withdrawn else [SPEC],
            "ttl_ms": TTL_MS,
            "withdrawn": withdrawn,
        }
        payload = json.dumps(body).encode()
        await nc.publish(f"{NAMESPACE}.tools.announce", payload, headers=JSON_HEADERS)

    async def on_discover(_msg):
        await announce()

    async def on_call(msg):
        started = time.monotonic()
        try:
            call = json.loads(msg.data)
        except ValueError:
            call = None
        if not isinstance(call, dict):
            call, outcome = {}, failure("invalid_args", "The call is not a JSON object.")
        else:
            try:
                outcome = await answer(call)
            except ToolError as e:
                outcome = failure(e.kind, e.message, e.retryable)
            except Exception as e:  # a bug: say so, never leave the caller waiting
                outcome = failure("internal", f"weather failed: {e}")
        result = {
            "call_id": call.get("call_id", ""),
            "name": SPEC["name"],
            "duration_ms": int((time.monotonic() - started) * 1000),
            **outcome,
        }
        log(f"call {result['call_id']!r}", "failed" if "error" in outcome else "ok")
        if msg.reply:
            await nc.publish(msg.reply, json.dumps(result).encode(), headers=JSON_HEADERS)

    await nc.connect(
        os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
        name=f"{PROVIDER}-{INSTANCE[:8]}",
        max_reconnect_attempts=-1,
        reconnected_cb=announce,  # providers may have been forgotten meanwhile
    )
    # Serve first, announce second: whoever sees the tool finds it answering.
    # nats-py runs one callback at a time per subscription; for more throughput start
    # more processes: the queue group gives each call to one of them.
    subject, group = f"{NAMESPACE}.tool.{SPEC['name']}", f"{NAMESPACE}_{PROVIDER}"
    await nc.subscribe(subject, queue=group, cb=on_call)
    await nc.subscribe(f"{NAMESPACE}.tools.discover", cb=on_discover)
    await nc.flush()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log(f"serving {subject} in queue group {group}")
    while not stopping.is_set():
        await announce()
        try:
            await asyncio.wait_for(stopping.wait(), ANNOUNCE_EVERY)
        except asyncio.TimeoutError:
            pass

    # Withdraw first, so callers forget this instance now; then answer the calls
    # already delivered, and close.
    await announce(withdrawn=True)
    await nc.flush()
    await nc.drain()
    log("withdrawn and stopped")


if __name__ == "__main__":
    asyncio.run(main())
