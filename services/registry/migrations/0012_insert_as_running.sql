-- A task a runner starts before anything has read it (the usual case while the runners keep up)
-- was recorded as queued and then updated to running in the same transaction: two versions of
-- its row, each with an entry in every index of tasks, the first dead at once. It is now
-- inserted as running, once. A task that may not start now (its code paused or with
-- max_concurrency, not due yet, its revision gone) is inserted as queued, as it was recorded
-- before, and left to the one-call path; only a task recorded already (read by a lookup, a
-- list or the stats) goes on to workhook_start_tasks. Each task still costs one insert attempt
-- and at most one update, as before; an unrecorded one that starts, one write instead of two.
CREATE OR REPLACE FUNCTION workhook_record_and_start_tasks(
    ids TEXT[], project_ids TEXT[], code_ids TEXT[], code_names TEXT[], code_revs INT4[],
    priorities INT2[], timeouts INT4[], delays INT4[], labels TEXT[], clusters TEXT[],
    sources TEXT[], payloads BYTEA[], received_ms INT8[], retry_ofs TEXT[], retry_counts INT4[],
    schedule_ids TEXT[], verified_bys TEXT[], requests TEXT[], payload_refs TEXT[],
    runner_ids TEXT[], lease_ms FLOAT8[], token_hashes BYTEA[])
RETURNS TABLE (started_id TEXT, started_attempt INT, run_command TEXT, run_config TEXT,
               run_env_vars JSONB, run_checksum TEXT, run_timeout INT)
LANGUAGE plpgsql AS $$
DECLARE
    fresh RECORD;
    recorded TEXT[] := '{}';
    rest_ids TEXT[];
    rest_project_ids TEXT[];
    rest_runner_ids TEXT[];
    rest_lease_ms FLOAT8[];
    rest_token_hashes BYTEA[];
BEGIN
    -- The conditions are workhook_start_tasks's, read from the code's rows instead of the
    -- task's. Inserted in task id order, the order every batch locks rows in; a task another
    -- batch is inserting meanwhile waits for it, then conflicts and is started by row below.
    FOR fresh IN
        WITH inserted AS (
            INSERT INTO tasks (id, project_id, code_id, code_name, code_rev, priority, timeout,
                delay, label, cluster, source, payload, created_at, updated_at, retry_of,
                retry_count, schedule_id, verified_by, request, payload_ref, status, attempt,
                runner_id, lease_expires_at, start_time, task_token_hash)
            SELECT q.id, q.project_id, q.code_id, q.code_name, q.code_rev, q.priority, q.timeout,
                q.delay, q.label, q.cluster, q.source, q.payload, q.created_at,
                CASE WHEN q.runs THEN now() ELSE q.created_at END, q.retry_of, q.retry_count,
                q.schedule_id, q.verified_by, q.request, q.payload_ref,
                CASE WHEN q.runs THEN 'running' ELSE 'queued' END,
                CASE WHEN q.runs THEN 1 ELSE 0 END,
                CASE WHEN q.runs THEN q.runner_id END,
                CASE WHEN q.runs THEN now() + q.lease * interval '1 millisecond' END,
                CASE WHEN q.runs THEN now() END,
                CASE WHEN q.runs THEN q.token_hash END
            FROM (
                SELECT u.*, to_timestamp(u.received / 1000.0) AS created_at,
                    COALESCE(NOT c.paused AND r.code_id IS NOT NULL
                        AND COALESCE(latest.max_concurrency, 0) <= 0
                        AND to_timestamp(u.received / 1000.0) + u.delay * interval '1 second'
                            <= now(), false) AS runs
                FROM UNNEST(ids, project_ids, code_ids, code_names, code_revs, priorities,
                    timeouts, delays, labels, clusters, sources, payloads, received_ms, retry_ofs,
                    retry_counts, schedule_ids, verified_bys, requests, payload_refs, runner_ids,
                    lease_ms, token_hashes)
                    AS u(id, project_id, code_id, code_name, code_rev, priority, timeout, delay,
                         label, cluster, source, payload, received, retry_of, retry_count,
                         schedule_id, verified_by, request, payload_ref, runner_id, lease,
                         token_hash)
                LEFT JOIN codes c ON c.id = u.code_id
                LEFT JOIN code_revisions r ON r.code_id = u.code_id AND r.rev = u.code_rev
                LEFT JOIN code_revisions latest ON latest.code_id = c.id AND latest.rev = c.rev
                -- A recorded task skips the joins (the insert would only conflict).
                WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = u.id)
            ) AS q
            ORDER BY q.id
            ON CONFLICT (id) DO NOTHING
            RETURNING tasks.id, tasks.status, tasks.attempt, tasks.code_id, tasks.code_rev,
                tasks.timeout
        )
        SELECT i.id, i.status, i.attempt, r.command, r.config, r.env_vars, r.checksum, i.timeout
        FROM inserted i LEFT JOIN code_revisions r ON r.code_id = i.code_id AND r.rev = i.code_rev
    LOOP
        recorded := recorded || fresh.id;
        CONTINUE WHEN fresh.status <> 'running';
        started_id := fresh.id;
        started_attempt := fresh.attempt;
        run_command := fresh.command;
        run_config := fresh.config;
        run_env_vars := fresh.env_vars;
        run_checksum := fresh.checksum;
        run_timeout := fresh.timeout;
        RETURN NEXT;
    END LOOP;
    IF cardinality(recorded) = cardinality(ids) THEN
        RETURN;
    END IF;
    -- The tasks recorded before this call: started by row, as before.
    IF cardinality(recorded) = 0 THEN
        RETURN QUERY SELECT * FROM workhook_start_tasks(ids, project_ids, runner_ids, lease_ms,
                                                        token_hashes);
        RETURN;
    END IF;
    SELECT array_agg(u.id ORDER BY u.id), array_agg(u.project_id ORDER BY u.id),
        array_agg(u.runner_id ORDER BY u.id), array_agg(u.lease ORDER BY u.id),
        array_agg(u.token_hash ORDER BY u.id)
    INTO rest_ids, rest_project_ids, rest_runner_ids, rest_lease_ms, rest_token_hashes
    FROM UNNEST(ids, project_ids, runner_ids, lease_ms, token_hashes)
        AS u(id, project_id, runner_id, lease, token_hash)
    WHERE u.id <> ALL (recorded);
    RETURN QUERY SELECT * FROM workhook_start_tasks(rest_ids, rest_project_ids, rest_runner_ids,
                                                    rest_lease_ms, rest_token_hashes);
END $$;
