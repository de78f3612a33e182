-- Full-text index of the Markdown memory (PostgreSQL: tsvector, GIN, ts_rank_cd).
-- Derived data: the files in the workspace are the truth; any row here can be
-- rebuilt from them, and is whenever a file's size, mtime or hash changes.

-- One row per indexed file, with what it looked like when it was indexed.
-- Re-indexing a file locks its row first, so two replicas re-indexing it at
-- once take turns instead of interleaving their chunks.
CREATE TABLE memory_files (
    path          TEXT   PRIMARY KEY, -- relative to the workspace: MEMORY.md, USER_<id>.md, memories/<day>.md
    owner         TEXT   NOT NULL,    -- the user id of USER_<id>.md; '' for shared files
    size_bytes    BIGINT NOT NULL,
    mtime_ns      BIGINT NOT NULL,
    sha256        TEXT   NOT NULL,    -- of the indexed bytes
    indexed_at_ms BIGINT NOT NULL
);

-- One row per paragraph or list item, under its heading path.
CREATE TABLE memory_chunks (
    id         BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    path       TEXT    NOT NULL REFERENCES memory_files (path),
    owner      TEXT    NOT NULL,   -- copied from memory_files, so a search filters without a join
    seq        INTEGER NOT NULL,   -- position in the file
    heading    TEXT    NOT NULL,   -- "Memory > Facts"; '' before the first heading
    line_start INTEGER NOT NULL,   -- 1-based, inclusive
    line_end   INTEGER NOT NULL,
    text       TEXT    NOT NULL,
    -- Headings weigh more than body text. 'english' matches SQLite's porter stemmer.
    tsv        TSVECTOR GENERATED ALWAYS AS (
                   setweight(to_tsvector('english', heading), 'A')
                   || setweight(to_tsvector('english', text), 'B')
               ) STORED
);

CREATE INDEX memory_chunks_path ON memory_chunks (path, seq);
CREATE INDEX memory_chunks_owner ON memory_chunks (owner);
CREATE INDEX memory_chunks_tsv ON memory_chunks USING GIN (tsv);
