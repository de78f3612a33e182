-- Per-session settings changed by chat commands (SQLite).

-- /new: history only includes entries with an id above this; earlier ones stay
-- stored (archived), so their turns still count as answered.
ALTER TABLE sessions ADD COLUMN history_from_entry INTEGER NOT NULL DEFAULT 0;

-- /model: the model chosen for this session; '' means the configured route.
ALTER TABLE sessions ADD COLUMN model_override TEXT NOT NULL DEFAULT '';
