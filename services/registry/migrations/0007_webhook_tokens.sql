-- Webhook tokens: scoped to one code, they can only queue its tasks through the webhook, so a
-- webhook URL pasted into a third party that leaks does not expose the project. Project tokens
-- have no code_id.
ALTER TABLE tokens ADD COLUMN id TEXT;
ALTER TABLE tokens ADD COLUMN code_id TEXT REFERENCES codes (id) ON DELETE CASCADE;
CREATE UNIQUE INDEX tokens_by_id ON tokens (id);
CREATE INDEX tokens_by_code ON tokens (code_id) WHERE code_id IS NOT NULL;
