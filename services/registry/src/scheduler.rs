//! Runs schedules: every second, the registry that wins a Postgres advisory lock queues a task
//! for each due schedule. A run's task id is derived from (schedule, run number) and is its
//! `Nats-Msg-Id`, and the schedule row only advances after the PubAck, in the same transaction
//! that holds the row: a registry that dies between the two leaves the run to be published again
//! under the same id, which JetStream's duplicate window and the recorder's `ON CONFLICT` absorb.
//! So with any number of registry replicas each due run queues exactly one task.

use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use workhook_core::{ids, stream::Layout, Envelope, Source};

const TICK: Duration = Duration::from_secs(1);
const BATCH: i64 = 100;
/// Key of the advisory lock that makes one registry the scheduler at a time.
const LOCK_KEY: i64 = 0x776f_726b_686f_6f6b; // "workhook"

pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    layout: Layout,
    shutdown: CancellationToken,
) {
    crate::every(TICK, shutdown, "the scheduler tick", || {
        run_due(&pool, &js, &layout)
    })
    .await;
}

#[derive(sqlx::FromRow)]
struct Due {
    id: String,
    project_id: String,
    code_name: String,
    payload: Vec<u8>,
    end_at: Option<DateTime<Utc>>,
    run_every: Option<i32>,
    run_times: Option<i32>,
    cron: Option<String>,
    priority: i16,
    timeout: i32,
    delay: i32,
    cluster: String,
    label: Option<String>,
    run_count: i32,
    next_start: DateTime<Utc>,
    code_id: Option<String>,
    code_rev: Option<i32>,
    code_paused: Option<bool>,
}

/// The first time after `after` that a cron expression (with seconds) names.
pub fn next_cron(expr: &str, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    use std::str::FromStr;
    cron::Schedule::from_str(expr).ok()?.after(&after).next()
}

/// The next start after `now`, whole periods after `from` (missed runs are skipped, not
/// queued all at once after an outage).
pub fn next_start(from: DateTime<Utc>, every_secs: i64, now: DateTime<Utc>) -> DateTime<Utc> {
    let every = chrono::Duration::seconds(every_secs.max(1));
    let mut next = from + every;
    if next <= now {
        let behind = (now - next).num_seconds() / every_secs.max(1) + 1;
        next += every * behind as i32;
    }
    next
}

async fn run_due(pool: &PgPool, js: &jetstream::Context, layout: &Layout) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let (leader,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *tx)
        .await?;
    if !leader {
        return Ok(());
    }
    let due: Vec<Due> = sqlx::query_as(
        "SELECT s.id, s.project_id, s.code_name, s.payload, s.end_at, s.run_every, s.run_times,
            s.cron, s.priority, s.timeout, s.delay, s.cluster, s.label, s.run_count, s.next_start,
            c.id AS code_id, c.rev AS code_rev, c.paused AS code_paused
         FROM schedules s
         LEFT JOIN codes c ON c.project_id = s.project_id AND c.name = s.code_name
         WHERE s.status = 'scheduled' AND s.next_start <= now()
           AND (c.paused IS NULL OR c.paused = false)
         ORDER BY s.next_start
         LIMIT $1
         FOR UPDATE OF s SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let now = Utc::now();
    for s in due {
        debug_assert_ne!(s.code_paused, Some(true));
        let run = s.run_count + 1;
        let ended = s.end_at.is_some_and(|end| s.next_start > end);
        let (mut error, mut msg) = (false, String::new());
        if ended {
            sqlx::query(
                "UPDATE schedules SET status = 'complete', msg = 'Reached end_at.', next_start = NULL,
                    updated_at = now() WHERE id = $1",
            )
            .bind(&s.id)
            .execute(&mut *tx)
            .await?;
            continue;
        }
        match (&s.code_id, s.code_rev) {
            (Some(code_id), Some(code_rev)) => {
                let envelope = Envelope {
                    task_id: ids::id_for_key(&format!("schedule/{}/{run}", s.id)),
                    project_id: s.project_id.clone(),
                    code_id: code_id.clone(),
                    code_name: s.code_name.clone(),
                    code_rev,
                    priority: s.priority.clamp(0, 2) as u8,
                    timeout: s.timeout.clamp(1, 3600) as u32,
                    delay: s.delay.max(0) as u32,
                    label: s.label.clone(),
                    cluster: s.cluster.clone(),
                    received_at: now.timestamp_millis(),
                    source: Source::Schedule,
                    retry_of: None,
                    retry_count: 0,
                    schedule_id: Some(s.id.clone()),
                    verified_by: None,
                    request: None,
                    payload_ref: None,
                };
                // A scheduled run's trace starts here: the runner's task span is its child.
                let span = tracing::info_span!(
                    "schedule",
                    otel.kind = "producer",
                    schedule_id = %s.id,
                    task_id = %envelope.task_id,
                );
                let message = envelope.queue_message(
                    s.payload.clone().into(),
                    Some(&envelope.task_id),
                    &span,
                );
                let subject = layout.subject_for(&envelope);
                // Not durable means not run: leave the schedule as it is and try next tick.
                async { js.send_publish(subject, message).await?.await }
                    .instrument(span)
                    .await?;
            }
            _ => {
                error = true;
                msg = format!("Code {} not found.", s.code_name);
            }
        }
        let cron = s.cron.as_deref().filter(|c| !c.is_empty());
        let finished =
            (s.run_every.is_none() && cron.is_none()) || s.run_times.is_some_and(|max| run >= max);
        let next = match (cron, s.run_every) {
            (Some(expr), _) => next_cron(expr, now),
            (None, Some(every)) => Some(next_start(s.next_start, i64::from(every), now)),
            (None, None) => None,
        };
        let past_end = matches!((next, s.end_at), (Some(n), Some(end)) if n > end);
        let (status, final_msg) = if finished {
            ("complete", "Ran max times.".to_string())
        } else if past_end {
            ("complete", "Reached end_at.".to_string())
        } else {
            ("scheduled", msg)
        };
        sqlx::query(
            "UPDATE schedules SET run_count = $2, last_run_time = now(), updated_at = now(),
                status = $3, msg = $4, error_count = error_count + $5,
                next_start = CASE WHEN $3 = 'scheduled' THEN $6 ELSE NULL END
             WHERE id = $1",
        )
        .bind(&s.id)
        .bind(run)
        .bind(status)
        .bind(final_msg)
        .bind(i32::from(error))
        .bind(next)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    #[test]
    fn cron_expressions_name_the_next_time() {
        // Every 5 minutes, on the minute.
        assert_eq!(
            next_cron("0 */5 * * * *", t(1_700_000_000)),
            Some(t(1_700_000_100))
        );
        assert_eq!(
            next_cron("* * * * * *", t(1_700_000_000)),
            Some(t(1_700_000_001))
        );
        assert_eq!(next_cron("not cron", t(0)), None);
    }

    #[test]
    fn the_next_start_is_whole_periods_later_and_after_now() {
        assert_eq!(next_start(t(1000), 60, t(1000)), t(1060));
        assert_eq!(next_start(t(1000), 60, t(1059)), t(1060));
        // After an outage, missed runs are skipped.
        assert_eq!(next_start(t(1000), 60, t(1060)), t(1120));
        assert_eq!(next_start(t(1000), 60, t(1500)), t(1540));
    }
}
