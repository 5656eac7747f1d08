-- Projects, their hashed tokens, code packages, tasks and task logs.

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Only the SHA-256 of a token is stored; the token itself is shown once, at creation.
CREATE TABLE tokens (
    hash        BYTEA PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Package bytes, addressed by their SHA-256, shared by every revision that uploads the same zip.
CREATE TABLE packages (
    checksum    TEXT PRIMARY KEY,
    data        BYTEA NOT NULL,
    size        BIGINT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE codes (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    rev         INT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

-- Every upload of a code is a revision; a task runs the revision it was queued with.
CREATE TABLE code_revisions (
    id                TEXT PRIMARY KEY,
    code_id           TEXT NOT NULL REFERENCES codes (id) ON DELETE CASCADE,
    rev               INT NOT NULL,
    command           TEXT NOT NULL,
    config            TEXT,
    env_vars          JSONB NOT NULL DEFAULT '{}',
    max_concurrency   INT,
    retries           INT NOT NULL DEFAULT 0,
    retries_delay     INT NOT NULL DEFAULT 0,
    default_priority  INT NOT NULL DEFAULT 0,
    runtime           TEXT NOT NULL DEFAULT '',
    file_name         TEXT NOT NULL DEFAULT '',
    checksum          TEXT REFERENCES packages (checksum),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (code_id, rev)
);

CREATE TABLE tasks (
    id                TEXT PRIMARY KEY,
    project_id        TEXT NOT NULL,
    code_id           TEXT NOT NULL,
    code_name         TEXT NOT NULL,
    code_rev          INT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'preparing', 'running', 'complete', 'error',
                                        'cancelled', 'killed', 'timeout')),
    priority          SMALLINT NOT NULL DEFAULT 0,
    timeout           INT NOT NULL,
    delay             INT NOT NULL DEFAULT 0,
    label             TEXT,
    cluster           TEXT NOT NULL DEFAULT 'default',
    source            TEXT NOT NULL,
    payload           BYTEA NOT NULL,
    msg               TEXT NOT NULL DEFAULT '',
    error_class       TEXT NOT NULL DEFAULT '',
    -- Which start of the task the row describes; every report from a runner names it, so a late
    -- report from a runner that lost the task cannot overwrite the result.
    attempt           INT NOT NULL DEFAULT 0,
    runner_id         TEXT,
    lease_expires_at  TIMESTAMPTZ,
    retry_count       INT NOT NULL DEFAULT 0,
    percent           INT NOT NULL DEFAULT 0,
    log_size          BIGINT NOT NULL DEFAULT 0,
    log_truncated     BOOLEAN NOT NULL DEFAULT false,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    start_time        TIMESTAMPTZ,
    end_time          TIMESTAMPTZ
);

CREATE INDEX tasks_by_project ON tasks (project_id, created_at DESC);
CREATE INDEX tasks_by_code ON tasks (code_id, status);

CREATE TABLE task_logs (
    id       BIGSERIAL PRIMARY KEY,
    task_id  TEXT NOT NULL,
    attempt  INT NOT NULL,
    -- 1 = stdout, 2 = stderr, 3 = written by workhook itself (e.g. the truncation mark)
    stream   SMALLINT NOT NULL,
    data     BYTEA NOT NULL
);

CREATE INDEX task_logs_by_task ON task_logs (task_id, attempt, id);
