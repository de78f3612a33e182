-- Session history of memory-svc (PostgreSQL). Times are milliseconds since the Unix epoch.

CREATE TABLE sessions (
    id            TEXT   PRIMARY KEY, -- SessionKey::id(): channel:chat[:thread]
    channel       TEXT   NOT NULL,
    chat_id       TEXT   NOT NULL,
    thread_id     TEXT   NOT NULL DEFAULT '',
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

-- One row per answered inbound message; the primary key is the idempotency key.
CREATE TABLE turns (
    turn_id       TEXT   PRIMARY KEY,
    session_id    TEXT   NOT NULL REFERENCES sessions (id),
    user_id       TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    reply         BYTEA                -- prost-encoded OutboundMessage
);

CREATE TABLE entries (
    id           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- insertion order is history order
    session_id   TEXT    NOT NULL REFERENCES sessions (id),
    turn_id      TEXT    NOT NULL REFERENCES turns (turn_id),
    seq          INTEGER NOT NULL,
    role         INTEGER NOT NULL,
    text         TEXT    NOT NULL,
    tool_name    TEXT    NOT NULL DEFAULT '',
    tool_call_id TEXT    NOT NULL DEFAULT '',
    at_ms        BIGINT  NOT NULL,
    UNIQUE (turn_id, seq)
);

CREATE INDEX entries_session_id ON entries (session_id, id);
