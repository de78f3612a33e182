-- Per-session settings changed by chat commands (PostgreSQL).

ALTER TABLE sessions
    -- /new: history only includes entries with an id above this; earlier ones stay
    -- stored (archived), so their turns still count as answered.
    ADD COLUMN history_from_entry BIGINT NOT NULL DEFAULT 0,
    -- /model: the model chosen for this session; '' means the configured route.
    ADD COLUMN model_override     TEXT   NOT NULL DEFAULT '';
