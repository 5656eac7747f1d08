-- Queued tasks are no longer recorded as they are published: they wait in the stream, and a row
-- is written when something reads them (a lookup, a list, the stats: see
-- services/registry/src/catchup.rs) or when a runner starts them. Only delayed tasks, which the
-- registry releases from their rows, are still recorded on arrival.

-- How far into the task stream the catch-up has recorded: per stream, and per incarnation of
-- it (a stream deleted and created again starts its sequence over).
CREATE TABLE stream_recorded (
    stream TEXT PRIMARY KEY,
    stream_created_ns BIGINT NOT NULL,
    seq BIGINT NOT NULL
);

-- Records queued tasks as they appear in the stream; one already recorded (a redelivery, or a
-- task recorded by a read or a runner first) is left as it is. Returns how many it recorded.
CREATE FUNCTION workhook_record_tasks(
    ids TEXT[], project_ids TEXT[], code_ids TEXT[], code_names TEXT[], code_revs INT4[],
    priorities INT2[], timeouts INT4[], delays INT4[], labels TEXT[], clusters TEXT[],
    sources TEXT[], payloads BYTEA[], received_ms INT8[], retry_ofs TEXT[], retry_counts INT4[],
    schedule_ids TEXT[], verified_bys TEXT[], requests TEXT[], payload_refs TEXT[])
RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    recorded BIGINT;
BEGIN
    INSERT INTO tasks (id, project_id, code_id, code_name, code_rev, priority, timeout, delay,
        label, cluster, source, payload, created_at, updated_at, retry_of, retry_count,
        schedule_id, verified_by, request, payload_ref)
    SELECT q.id, q.project_id, q.code_id, q.code_name, q.code_rev, q.priority, q.timeout,
        q.delay, q.label, q.cluster, q.source, q.payload, to_timestamp(q.received / 1000.0),
        to_timestamp(q.received / 1000.0), q.retry_of, q.retry_count, q.schedule_id,
        q.verified_by, q.request, q.payload_ref
    FROM UNNEST(ids, project_ids, code_ids, code_names, code_revs, priorities, timeouts, delays,
        labels, clusters, sources, payloads, received_ms, retry_ofs, retry_counts, schedule_ids,
        verified_bys, requests, payload_refs)
        AS q(id, project_id, code_id, code_name, code_rev, priority, timeout, delay, label,
             cluster, source, payload, received, retry_of, retry_count, schedule_id, verified_by,
             request, payload_ref)
    ON CONFLICT (id) DO NOTHING;
    GET DIAGNOSTICS recorded = ROW_COUNT;
    RETURN recorded;
END $$;

-- workhook_start_tasks for tasks that may not be recorded yet: records those that are not, then
-- starts every one that may start now. One round trip and one commit for a batch of StartTask
-- calls, as before.
CREATE FUNCTION workhook_record_and_start_tasks(
    ids TEXT[], project_ids TEXT[], code_ids TEXT[], code_names TEXT[], code_revs INT4[],
    priorities INT2[], timeouts INT4[], delays INT4[], labels TEXT[], clusters TEXT[],
    sources TEXT[], payloads BYTEA[], received_ms INT8[], retry_ofs TEXT[], retry_counts INT4[],
    schedule_ids TEXT[], verified_bys TEXT[], requests TEXT[], payload_refs TEXT[],
    runner_ids TEXT[], lease_ms FLOAT8[], token_hashes BYTEA[])
RETURNS TABLE (started_id TEXT, started_attempt INT, run_command TEXT, run_config TEXT,
               run_env_vars JSONB, run_checksum TEXT, run_timeout INT)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM workhook_record_tasks(ids, project_ids, code_ids, code_names, code_revs, priorities,
        timeouts, delays, labels, clusters, sources, payloads, received_ms, retry_ofs,
        retry_counts, schedule_ids, verified_bys, requests, payload_refs);
    RETURN QUERY SELECT * FROM workhook_start_tasks(ids, project_ids, runner_ids, lease_ms,
                                                    token_hashes);
END $$;
