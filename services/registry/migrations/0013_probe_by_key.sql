-- Migration 0012 found the recorded tasks of a start batch with one NOT EXISTS over the batch.
-- Planned while tasks was small, that became a hash anti-join over a sequential scan of tasks,
-- and plpgsql keeps a statement's plan for the connection's life: 289 ms a batch once the table
-- held a million rows. Each task's row is now probed by its primary key (an index-only scan
-- whatever the table's size when planned); a task recorded already is started by its row, as
-- before 0012, without an insert that could only conflict; any other is inserted, as running if
-- it may start now, as queued if not (then left to the one-call path). A new migration rather than
-- an edit of 0012, which databases may have applied.
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
    recorded INT[] := '{}';
    unrecorded INT[] := '{}';
    inserted TEXT[] := '{}';
    fresh RECORD;
BEGIN
    -- Which tasks have a row: one primary-key probe each. (Not one statement over all of them:
    -- planned while tasks is small, a plan kept for the connection's life may scan the table,
    -- as a NOT EXISTS over the batch did, 289 ms a batch once tasks held a million rows.)
    FOR i IN 1 .. coalesce(array_length(ids, 1), 0) LOOP
        PERFORM FROM tasks t WHERE t.id = ids[i];
        IF FOUND THEN
            recorded := recorded || i;
        ELSE
            unrecorded := unrecorded || i;
        END IF;
    END LOOP;
    -- Recorded ones start by their rows (ids stay in order, the order rows are locked in).
    IF cardinality(unrecorded) = 0 THEN
        RETURN QUERY SELECT * FROM workhook_start_tasks(ids, project_ids, runner_ids, lease_ms,
                                                        token_hashes);
        RETURN;
    END IF;
    IF cardinality(recorded) > 0 THEN
        RETURN QUERY SELECT * FROM workhook_start_tasks(
            ARRAY(SELECT ids[i] FROM unnest(recorded) AS i),
            ARRAY(SELECT project_ids[i] FROM unnest(recorded) AS i),
            ARRAY(SELECT runner_ids[i] FROM unnest(recorded) AS i),
            ARRAY(SELECT lease_ms[i] FROM unnest(recorded) AS i),
            ARRAY(SELECT token_hashes[i] FROM unnest(recorded) AS i));
    END IF;
    -- The others are inserted, in task id order: running if they may start now (the conditions
    -- of workhook_start_tasks, read from the code's rows), queued if not.
    FOR fresh IN
        WITH written AS (
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
                    lease_ms, token_hashes) WITH ORDINALITY
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
        FROM written w LEFT JOIN code_revisions r ON r.code_id = w.code_id AND r.rev = w.code_rev
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
    -- A task another call recorded meanwhile (its insert conflicted): started by its row.
    IF cardinality(inserted) < cardinality(unrecorded) THEN
        unrecorded := ARRAY(SELECT i FROM unnest(unrecorded) AS i WHERE ids[i] <> ALL (inserted));
        RETURN QUERY SELECT * FROM workhook_start_tasks(
            ARRAY(SELECT ids[i] FROM unnest(unrecorded) AS i),
            ARRAY(SELECT project_ids[i] FROM unnest(unrecorded) AS i),
            ARRAY(SELECT runner_ids[i] FROM unnest(unrecorded) AS i),
            ARRAY(SELECT lease_ms[i] FROM unnest(unrecorded) AS i),
            ARRAY(SELECT token_hashes[i] FROM unnest(unrecorded) AS i));
    END IF;
END $$;
