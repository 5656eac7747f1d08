//! Releases delayed tasks. A task queued with a delay is published on a subject no runner
//! consumes, so while it waits it holds no runner slot and no consumer capacity; the recorder
//! records it like any task. Every 250 ms each registry takes the due ones (`FOR UPDATE SKIP
//! LOCKED`, so replicas share the work), publishes each to its priority's subject under the id
//! `<task>.due` (a release repeated after a crash is dropped as a duplicate, and a second delivery
//! of a task is skipped by the registry anyway), and marks it released. It all lives in Postgres
//! and the stream, so it survives a restart of any component.

use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use workhook_core::{stream::Layout, Envelope, Source};

const TICK: Duration = Duration::from_millis(250);
const BATCH: i64 = 500;

pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    layout: Layout,
    shutdown: CancellationToken,
) {
    crate::every(TICK, shutdown, "releasing delayed tasks", || {
        release_due(&pool, &js, &layout)
    })
    .await;
}

#[derive(sqlx::FromRow)]
struct Due {
    id: String,
    project_id: String,
    code_id: String,
    code_name: String,
    code_rev: i32,
    priority: i16,
    timeout: i32,
    delay: i32,
    label: Option<String>,
    cluster: String,
    source: String,
    payload: Vec<u8>,
    created_at: DateTime<Utc>,
    retry_of: Option<String>,
    retry_count: i32,
    schedule_id: Option<String>,
    verified_by: Option<String>,
    request: Option<String>,
    payload_ref: Option<String>,
}

async fn release_due(
    pool: &PgPool,
    js: &jetstream::Context,
    layout: &Layout,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let due: Vec<Due> = sqlx::query_as(
        "SELECT id, project_id, code_id, code_name, code_rev, priority, timeout, delay, label,
            cluster, source, payload, created_at, retry_of, retry_count, schedule_id, verified_by,
            request, payload_ref
         FROM tasks
         WHERE delay > 0 AND NOT released AND status = 'queued'
           AND created_at + delay * interval '1 second' <= now()
         ORDER BY created_at
         LIMIT $1
         FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if due.is_empty() {
        return Ok(());
    }
    let mut acks = Vec::with_capacity(due.len());
    let mut released = Vec::with_capacity(due.len());
    for t in due {
        let envelope = Envelope {
            task_id: t.id.clone(),
            project_id: t.project_id,
            code_id: t.code_id,
            code_name: t.code_name,
            code_rev: t.code_rev,
            priority: t.priority.clamp(0, 2) as u8,
            timeout: t.timeout.max(1) as u32,
            delay: t.delay.max(0) as u32,
            label: t.label,
            cluster: t.cluster,
            received_at: t.created_at.timestamp_millis(),
            source: Source::parse(&t.source).unwrap_or(Source::Api),
            retry_of: t.retry_of,
            retry_count: t.retry_count.max(0) as u32,
            schedule_id: t.schedule_id,
            verified_by: t.verified_by,
            request: t.request,
            payload_ref: t.payload_ref,
        };
        let subject = layout.own_subject(
            envelope.priority,
            &envelope.project_id,
            &envelope.code_id,
            &envelope.task_id,
        );
        // Its own trace: the context of the request that queued it is not kept in Postgres.
        let message = envelope.queue_message(
            t.payload.into(),
            Some(&format!("{}.due", t.id)),
            &tracing::Span::none(),
        );
        acks.push(js.send_publish(subject, message).await?);
        released.push(t.id);
    }
    for ack in acks {
        ack.await?;
    }
    sqlx::query("UPDATE tasks SET released = true WHERE id = ANY($1)")
        .bind(&released)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
