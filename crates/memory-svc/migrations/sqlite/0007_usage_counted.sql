-- The usage ledger takes events in batches, and two memory-svc replicas may count
-- batches at once, finishing in either order: a high-water mark alone would skip
-- the events of the batch that finished second. Each counted event's sequence is
-- kept instead; usage_cursor.last_seq becomes the floor at or below which every
-- event is settled (raised to the events stream's first sequence as it expires,
-- and the sequences below it dropped from here).
CREATE TABLE usage_counted (
    consumer TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (consumer, seq)
) WITHOUT ROWID;
