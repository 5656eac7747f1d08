-- A task a runner starts before anything has read it (the usual case while the runners keep up)
-- was recorded as queued and then updated to running in the same transaction: two versions of
-- its row, each with an entry in every index of tasks, the first dead at once. It is now
-- inserted as running, once; one that may not start now (its code paused or with
-- max_concurrency, not due yet, its revision gone) is inserted as queued, as it was recorded
-- before, and left to the one-call path. A task recorded already (read by a lookup, a list or the
-- stats) is started by its row as before, without an insert that could only conflict.
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
    unrecorded INT[] := '{}';
    inserted TEXT[] := '{}';
    fresh RECORD;
BEGIN
    -- Which tasks have no row yet: one primary-key probe each. Not one statement over the
    -- batch: plpgsql keeps a statement's plan for the connection's life, and a NOT EXISTS
    -- planned while tasks was small became a hash anti-join over a sequential scan of tasks
    -- (289 ms a batch once it held a million rows); a probe by key is an index scan whatever
    -- the table's size when planned.
    FOR i IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        PERFORM FROM tasks t WHERE t.id = ids[i];
        IF NOT FOUND THEN
            unrecorded := unrecorded || i;
        END IF;
    END LOOP;
    -- Those are inserted, in task id order: running if they may start now (the conditions of
    -- workhook_start_tasks, read from the code's rows), queued if not. A task another call
    -- inserts meanwhile waits for it, then conflicts and is started by its row below.
    IF cardinality(unrecorded) > 0 THEN
        FOR fresh IN
            WITH written AS (
                INSERT INTO tasks (id, project_id, code_id, code_name, code_rev, priority, timeout,
                    delay, label, cluster, source, payload, created_at, updated_at, retry_of,
                    retry_count, schedule_id, verified_by, request, payload_ref, status, attempt,
                    runner_id, lease_expires_at, start_time, task_token_hash)
                SELECT q.id, q.project_id, q.code_id, q.code_name, q.code_rev, q.priority,
                    q.timeout, q.delay, q.label, q.cluster, q.source, q.payload, q.created_at,
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
                        timeouts, delays, labels, clusters, sources, payloads, received_ms,
                        retry_ofs, retry_counts, schedule_ids, verified_bys, requests,
                        payload_refs, runner_ids, lease_ms, token_hashes) WITH ORDINALITY
                        AS u(id, project_id, code_id, code_name, code_rev, priority, timeout, delay,
                             label, cluster, source, payload, received, retry_of, retry_count,
                             schedule_id, verified_by, request, payload_ref, runner_id, lease,
                             token_hash, n)
                    LEFT JOIN codes c ON c.id = u.code_id
                    LEFT JOIN code_revisions r ON r.code_id = u.code_id AND r.rev = u.code_rev
                    LEFT JOIN code_revisions latest ON latest.code_id = c.id AND latest.rev = c.rev
                    WHERE u.n = ANY (unrecorded)
                ) AS q
                ORDER BY q.id
                ON CONFLICT (id) DO NOTHING
                RETURNING tasks.id, tasks.status, tasks.attempt, tasks.code_id, tasks.code_rev,
                    tasks.timeout
            )
            SELECT w.id, w.status, w.attempt, r.command, r.config, r.env_vars, r.checksum, w.timeout
            FROM written w
            LEFT JOIN code_revisions r ON r.code_id = w.code_id AND r.rev = w.code_rev
        LOOP
            inserted := inserted || fresh.id;
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
    END IF;
    -- Every other task (recorded before, or by another call meanwhile) starts by its row, in
    -- task id order. A batch inserts in id order, then updates in id order, and an update never
    -- waits on another call's uncommitted insert (it does not see that row): two batches do not
    -- deadlock. (If they ever did, Postgres fails one, and its calls take the one-call path.)
    IF cardinality(inserted) = cardinality(ids) THEN
        RETURN;
    END IF;
    IF cardinality(inserted) = 0 THEN
        RETURN QUERY SELECT * FROM workhook_start_tasks(ids, project_ids, runner_ids, lease_ms,
                                                        token_hashes);
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM workhook_start_tasks(
        ARRAY(SELECT id FROM unnest(ids) AS id WHERE id <> ALL (inserted)),
        ARRAY(SELECT p FROM unnest(ids, project_ids) AS u(id, p) WHERE id <> ALL (inserted)),
        ARRAY(SELECT r FROM unnest(ids, runner_ids) AS u(id, r) WHERE id <> ALL (inserted)),
        ARRAY(SELECT l FROM unnest(ids, lease_ms) AS u(id, l) WHERE id <> ALL (inserted)),
        ARRAY(SELECT h FROM unnest(ids, token_hashes) AS u(id, h) WHERE id <> ALL (inserted)));
END $$;
