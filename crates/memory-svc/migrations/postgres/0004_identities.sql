-- Who a sender is: a (channel, sender id) linked to a user id, so one person
-- on several channels shares one profile. Unlinked senders are the default
-- user id `<channel>_<sender>`, which is never stored.
CREATE TABLE identities (
    channel      TEXT    NOT NULL,
    sender_id    TEXT    NOT NULL,
    user_id      TEXT    NOT NULL, -- file-safe: [A-Za-z0-9_-], at most 96 characters
    linked_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (channel, sender_id)
);

CREATE INDEX identities_user ON identities (user_id);
