-- Journaling and consolidation (PostgreSQL). A session's entries up to
-- consolidated_to_entry are summarized; the pointer moves in the same
-- transaction that stores the summary, so nothing is summarized twice or lost.

ALTER TABLE sessions
    ADD COLUMN consolidated_to_entry  BIGINT  NOT NULL DEFAULT 0,
    -- One caller summarizes a session at a time; a lease that expires (a crash) frees it.
    ADD COLUMN consolidation_owner    TEXT    NOT NULL DEFAULT '',
    ADD COLUMN consolidation_until_ms BIGINT  NOT NULL DEFAULT 0,
    -- Failed attempts in a row, for the backoff.
    ADD COLUMN consolidation_failures INTEGER NOT NULL DEFAULT 0;

-- One row per summarized batch: the truth the journal files are written from.
-- applied_at_ms is set once the journal section and the facts are in the files;
-- a row left unapplied by a crash is applied again (idempotently) on start.
CREATE TABLE consolidations (
    id            BIGSERIAL PRIMARY KEY,
    session_id    TEXT    NOT NULL REFERENCES sessions (id),
    from_entry    BIGINT  NOT NULL, -- exclusive
    to_entry      BIGINT  NOT NULL, -- inclusive
    turns         INTEGER NOT NULL,
    first_at_ms   BIGINT  NOT NULL,
    last_at_ms    BIGINT  NOT NULL,
    day           TEXT    NOT NULL, -- YYYY-MM-DD in the configured timezone
    users         TEXT    NOT NULL, -- user ids, space-separated
    summary       TEXT    NOT NULL, -- Markdown bullets
    facts         TEXT    NOT NULL, -- JSON: [{"text": …, "user_id": …}]
    model         TEXT    NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    applied_at_ms BIGINT,
    UNIQUE (session_id, to_entry)
);

CREATE INDEX consolidations_unapplied ON consolidations (applied_at_ms, id);

-- Journal sections are now searchable only by the users their marker names:
-- drop the journals' index rows so they are re-chunked with their readers.
DELETE FROM memory_chunks WHERE path LIKE 'memories/%';
DELETE FROM memory_files WHERE path LIKE 'memories/%';
