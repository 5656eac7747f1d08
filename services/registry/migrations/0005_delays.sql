-- Delayed tasks wait in Postgres, not in a consumer: the registry releases each to the runners'
-- subjects when it is due. `request` keeps what a webhook's worker sees of its request.
ALTER TABLE tasks ADD COLUMN released BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE tasks ADD COLUMN request TEXT;
CREATE INDEX tasks_delayed ON tasks (created_at) WHERE delay > 0 AND NOT released AND status = 'queued';
