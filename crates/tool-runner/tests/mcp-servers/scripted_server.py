#!/usr/bin/env python3
"""A stdio MCP server (newline-delimited JSON-RPC, standard library only) whose
behaviour the tool-runner tests need and real servers do not offer on demand:

- `wait_forever` never answers (a hung call);
- `hello` answers at once (the server itself stays responsive);
- `grow` adds the tool `extra` and sends notifications/tools/list_changed;
- `env` lists the names in its environment;
- `bad.name` has a name that cannot become a Nexus tool name.
"""

import json
import os
import sys

TOOLS = {
    "wait_forever": "Never answers.",
    "hello": "Says hello.",
    "grow": "Adds the tool 'extra' and says that the tool list changed.",
    "env": "Lists the names of the environment variables it sees.",
    "bad.name": "Has a dot in its name.",
}


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def answer(request_id, result):
    send({"jsonrpc": "2.0", "id": request_id, "result": result})


def tool_list():
    return [
        {
            "name": name,
            "description": description,
            "inputSchema": {"type": "object", "properties": {}},
        }
        for name, description in TOOLS.items()
    ]


def text(value):
    return {"content": [{"type": "text", "text": value}], "isError": False}


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    message = json.loads(line)
    method = message.get("method")
    request_id = message.get("id")
    if request_id is None:
        continue  # a notification (initialized, cancelled)
    if method == "initialize":
        answer(
            request_id,
            {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": "scripted", "version": "1"},
            },
        )
    elif method == "ping":
        answer(request_id, {})
    elif method == "tools/list":
        answer(request_id, {"tools": tool_list()})
    elif method == "tools/call":
        name = message["params"]["name"]
        if name == "wait_forever":
            print(f"call {request_id} left unanswered", file=sys.stderr, flush=True)
        elif name == "hello":
            answer(request_id, text("hello from the scripted server"))
        elif name == "grow":
            TOOLS["extra"] = "Added by grow."
            answer(request_id, text("grown"))
            send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        elif name == "env":
            answer(request_id, text(json.dumps(sorted(os.environ))))
        elif name == "extra":
            answer(request_id, text("extra is here"))
        else:
            send(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "error": {"code": -32602, "message": f"unknown tool {name}"},
                }
            )
    else:
        send(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "error": {"code": -32601, "message": f"method not found: {method}"},
            }
        )
