-- workhook_start_tasks found each task with `t.id = ids[i] AND t.project_id = project_ids[i]`.
-- Planned while `tasks` was small or never analyzed (a new database; any Postgres with
-- autovacuum off, as on the machine the benchmarks run on), the primary key and
-- tasks_by_project_code both look like one row, and the plan cached for the connection's life
-- could take the project's index: every start then read all of the project's tasks (3,674
-- rows and 1,181 buffers for one start in the end-to-end benchmark, 250 buffers a start on
-- average against 17 for a completion). The task's row is now found by its primary key alone,
-- where no other index can serve, and updated by its address, which no index scan beats.
-- The conditions are the same and still checked on the row the update sees: a task updated
-- meanwhile is left to the one-call path, as before.
CREATE OR REPLACE FUNCTION workhook_start_tasks(
    ids TEXT[], project_ids TEXT[], runner_ids TEXT[], lease_ms FLOAT8[], token_hashes BYTEA[])
RETURNS TABLE (started_id TEXT, started_attempt INT, run_command TEXT, run_config TEXT,
               run_env_vars JSONB, run_checksum TEXT, run_timeout INT)
LANGUAGE plpgsql AS $$
DECLARE
    row_at TID;
BEGIN
    FOR i IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        SELECT t.ctid INTO row_at FROM tasks t WHERE t.id = ids[i];
        CONTINUE WHEN row_at IS NULL;
        RETURN QUERY
        UPDATE tasks t SET status = 'running', attempt = t.attempt + 1, runner_id = runner_ids[i],
            lease_expires_at = now() + lease_ms[i] * interval '1 millisecond',
            start_time = now(), updated_at = now(), msg = '', error_class = '',
            task_token_hash = token_hashes[i]
        FROM codes c, code_revisions r, code_revisions latest
        WHERE t.ctid = row_at AND t.id = ids[i] AND t.project_id = project_ids[i]
          AND t.status = 'queued'
          AND t.created_at + t.delay * interval '1 second' <= now()
          AND c.id = t.code_id AND NOT c.paused
          AND r.code_id = t.code_id AND r.rev = t.code_rev
          AND latest.code_id = c.id AND latest.rev = c.rev
          AND COALESCE(latest.max_concurrency, 0) <= 0
        RETURNING t.id, t.attempt, r.command, r.config, r.env_vars, r.checksum, t.timeout;
    END LOOP;
END $$;
