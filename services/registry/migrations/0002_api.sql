-- The rest of the IronWorker v2 API: retries and schedules link to tasks, codes can be paused.

ALTER TABLE tasks ADD COLUMN retry_of TEXT;
ALTER TABLE tasks ADD COLUMN schedule_id TEXT;
CREATE INDEX tasks_by_project_code ON tasks (project_id, code_name, created_at DESC);

ALTER TABLE codes ADD COLUMN paused BOOLEAN NOT NULL DEFAULT false;

CREATE TABLE schedules (
    id             TEXT PRIMARY KEY,
    project_id     TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    code_name      TEXT NOT NULL,
    name           TEXT NOT NULL DEFAULT '',
    payload        BYTEA NOT NULL DEFAULT '',
    start_at       TIMESTAMPTZ,
    end_at         TIMESTAMPTZ,
    run_every      INT,
    run_times      INT,
    priority       SMALLINT NOT NULL DEFAULT 0,
    timeout        INT NOT NULL DEFAULT 3600,
    delay          INT NOT NULL DEFAULT 0,
    cluster        TEXT NOT NULL DEFAULT 'default',
    label          TEXT,
    status         TEXT NOT NULL DEFAULT 'scheduled'
                   CHECK (status IN ('scheduled', 'complete', 'cancelled')),
    msg            TEXT NOT NULL DEFAULT '',
    run_count      INT NOT NULL DEFAULT 0,
    error_count    INT NOT NULL DEFAULT 0,
    last_run_time  TIMESTAMPTZ,
    next_start     TIMESTAMPTZ,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX schedules_by_project ON schedules (project_id, created_at);
CREATE INDEX schedules_due ON schedules (next_start) WHERE status = 'scheduled';
