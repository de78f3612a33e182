-- The usage ledger (SQLite): model calls and tokens per UTC day, user, channel,
-- model and purpose, summed from the llm_usage events of N_EVENTS.
CREATE TABLE usage_daily (
    day           TEXT    NOT NULL, -- YYYY-MM-DD, UTC
    user_id       TEXT    NOT NULL, -- '' when a call served no one user
    channel       TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    purpose       TEXT    NOT NULL, -- turn, journal
    calls         INTEGER NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    PRIMARY KEY (day, user_id, channel, model, purpose)
);

-- The last event sequence counted, per consumer, moved in the same transaction
-- as the sums: a redelivered event is never counted twice.
CREATE TABLE usage_cursor (
    consumer TEXT    PRIMARY KEY NOT NULL,
    last_seq INTEGER NOT NULL
);
