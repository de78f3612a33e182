-- Session history of memory-svc (SQLite). Times are milliseconds since the Unix epoch.

CREATE TABLE sessions (
    id            TEXT    PRIMARY KEY NOT NULL, -- SessionKey::id(): channel:chat[:thread]
    channel       TEXT    NOT NULL,
    chat_id       TEXT    NOT NULL,
    thread_id     TEXT    NOT NULL DEFAULT '',
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

-- One row per answered inbound message; the primary key is the idempotency key.
CREATE TABLE turns (
    turn_id       TEXT    PRIMARY KEY NOT NULL,
    session_id    TEXT    NOT NULL REFERENCES sessions (id),
    user_id       TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    reply         BLOB                           -- prost-encoded OutboundMessage
);

CREATE TABLE entries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT, -- insertion order is history order
    session_id   TEXT    NOT NULL REFERENCES sessions (id),
    turn_id      TEXT    NOT NULL REFERENCES turns (turn_id),
    seq          INTEGER NOT NULL,
    role         INTEGER NOT NULL,
    text         TEXT    NOT NULL,
    tool_name    TEXT    NOT NULL DEFAULT '',
    tool_call_id TEXT    NOT NULL DEFAULT '',
    at_ms        INTEGER NOT NULL,
    UNIQUE (turn_id, seq)
);

CREATE INDEX entries_session_id ON entries (session_id, id);
