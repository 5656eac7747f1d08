-- The runners' StartTask and FinishTask("complete") calls that arrive together are made as one
-- call of these functions: one round trip and one commit for the whole batch (see
-- services/registry/src/coalesce.rs). Each task is still updated by its own statement on its
-- primary key, planned and cached as the one-call statements are; one statement joining the
-- batch as an array would leave its plan to guesses about the array (and, planned while the
-- table was small, scan an index end to end for every batch).

-- Starts each task that may start now without a question: queued, of the project the call
-- names, due, of an unpaused code whose latest revision sets no max_concurrency, with its
-- revision still there. Returns those it started; the others are for the one-call path.
CREATE FUNCTION workhook_start_tasks(
    ids TEXT[], project_ids TEXT[], runner_ids TEXT[], lease_ms FLOAT8[], token_hashes BYTEA[])
RETURNS TABLE (started_id TEXT, started_attempt INT, run_command TEXT, run_config TEXT,
               run_env_vars JSONB, run_checksum TEXT, run_timeout INT)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        RETURN QUERY
        UPDATE tasks t SET status = 'running', attempt = t.attempt + 1, runner_id = runner_ids[i],
            lease_expires_at = now() + lease_ms[i] * interval '1 millisecond',
            start_time = now(), updated_at = now(), msg = '', error_class = '',
            task_token_hash = token_hashes[i]
        FROM codes c, code_revisions r, code_revisions latest
        WHERE t.id = ids[i] AND t.project_id = project_ids[i] AND t.status = 'queued'
          AND t.created_at + t.delay * interval '1 second' <= now()
          AND c.id = t.code_id AND NOT c.paused
          AND r.code_id = t.code_id AND r.rev = t.code_rev
          AND latest.code_id = c.id AND latest.rev = c.rev
          AND COALESCE(latest.max_concurrency, 0) <= 0
        RETURNING t.id, t.attempt, r.command, r.config, r.env_vars, r.checksum, t.timeout;
    END LOOP;
END $$;

-- Records each completion whose attempt still holds its task; returns those it recorded.
CREATE FUNCTION workhook_complete_tasks(
    ids TEXT[], attempts INT[], msgs TEXT[], error_classes TEXT[])
RETURNS TABLE (completed_id TEXT, completed_attempt INT)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        RETURN QUERY
        UPDATE tasks t SET status = 'complete', msg = msgs[i], error_class = error_classes[i],
            end_time = now(), updated_at = now(), lease_expires_at = NULL, percent = 100
        WHERE t.id = ids[i] AND t.attempt = attempts[i] AND t.status = 'running'
        RETURNING t.id, t.attempt;
    END LOOP;
END $$;
