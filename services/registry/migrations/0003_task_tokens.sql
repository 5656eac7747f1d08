-- A token scoped to one task, handed to its worker so it can report progress without a project
-- token in its payload. Only its SHA-256 is kept; each start mints a new one.
ALTER TABLE tasks ADD COLUMN task_token_hash BYTEA;
