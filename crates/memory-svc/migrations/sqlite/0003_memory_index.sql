-- Full-text index of the Markdown memory (SQLite, FTS5 with bm25 ranking).
-- Derived data: the files in the workspace are the truth; any row here can be
-- rebuilt from them, and is whenever a file's size, mtime or hash changes.

-- One row per indexed file, with what it looked like when it was indexed.
CREATE TABLE memory_files (
    path          TEXT    PRIMARY KEY NOT NULL, -- relative to the workspace: MEMORY.md, USER_<id>.md, memories/<day>.md
    owner         TEXT    NOT NULL,             -- the user id of USER_<id>.md; '' for shared files
    size_bytes    INTEGER NOT NULL,
    mtime_ns      INTEGER NOT NULL,
    sha256        TEXT    NOT NULL,             -- of the indexed bytes
    indexed_at_ms INTEGER NOT NULL
);

-- One row per paragraph or list item, under its heading path.
CREATE TABLE memory_chunks (
    id         INTEGER PRIMARY KEY,
    path       TEXT    NOT NULL REFERENCES memory_files (path),
    owner      TEXT    NOT NULL,   -- copied from memory_files, so a search filters without a join
    seq        INTEGER NOT NULL,   -- position in the file
    heading    TEXT    NOT NULL,   -- "Memory > Facts"; '' before the first heading
    line_start INTEGER NOT NULL,   -- 1-based, inclusive
    line_end   INTEGER NOT NULL,
    text       TEXT    NOT NULL
);

CREATE INDEX memory_chunks_path ON memory_chunks (path, seq);
CREATE INDEX memory_chunks_owner ON memory_chunks (owner);

-- External-content FTS5 table over memory_chunks, kept in step by the triggers.
-- porter: "birthdays" finds "birthday"; remove_diacritics: "cafe" finds "café".
CREATE VIRTUAL TABLE memory_chunks_fts USING fts5 (
    heading,
    text,
    content = 'memory_chunks',
    content_rowid = 'id',
    tokenize = 'porter unicode61 remove_diacritics 2'
);

CREATE TRIGGER memory_chunks_fts_insert AFTER INSERT ON memory_chunks BEGIN
    INSERT INTO memory_chunks_fts (rowid, heading, text) VALUES (new.id, new.heading, new.text);
END;

CREATE TRIGGER memory_chunks_fts_delete AFTER DELETE ON memory_chunks BEGIN
    INSERT INTO memory_chunks_fts (memory_chunks_fts, rowid, heading, text)
    VALUES ('delete', old.id, old.heading, old.text);
END;
