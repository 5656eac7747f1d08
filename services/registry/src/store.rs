//! Every query the registry runs. Rows are turned into the proto messages here, so the gRPC layer
//! only routes and checks.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};
use workhook_core::{ids, Envelope, Source};
use workhook_proto as pb;

use crate::error::{RegistryError, Result};

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn opt_ms(t: Option<DateTime<Utc>>) -> i64 {
    t.map(ms).unwrap_or(0)
}

pub async fn create_project(pool: &PgPool, name: &str) -> Result<pb::CreateProjectResponse> {
    let id = ids::new_id();
    let token = workhook_core::token::new_token();
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO projects (id, name) VALUES ($1, $2)")
        .bind(&id)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO tokens (hash, project_id) VALUES ($1, $2)")
        .bind(&workhook_core::token::hash_token(&token)[..])
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(pb::CreateProjectResponse {
        id,
        name: name.to_string(),
        token,
    })
}

/// Whether `token` is the token scoped to `task_id` (handed to its worker).
pub async fn authenticate_task(
    pool: &PgPool,
    project_id: &str,
    task_id: &str,
    token: &str,
) -> Result<bool> {
    let hash = workhook_core::token::hash_token(token);
    let found: Option<(String,)> = sqlx::query_as(
        "SELECT id FROM tasks WHERE id = $1 AND project_id = $2 AND task_token_hash = $3",
    )
    .bind(task_id)
    .bind(project_id)
    .bind(&hash[..])
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}

/// Whether `token` is a webhook token of the project's code `code_name`.
pub async fn authenticate_webhook(
    pool: &PgPool,
    project_id: &str,
    code_name: &str,
    token: &str,
) -> Result<bool> {
    let hash = workhook_core::token::hash_token(token);
    let found: Option<(String,)> = sqlx::query_as(
        "SELECT t.id FROM tokens t JOIN codes c ON c.id = t.code_id
         WHERE t.hash = $1 AND t.project_id = $2 AND c.name = $3",
    )
    .bind(&hash[..])
    .bind(project_id)
    .bind(code_name)
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}

pub async fn create_webhook_token(
    pool: &PgPool,
    project_id: &str,
    code_id: &str,
) -> Result<pb::WebhookToken> {
    code(pool, project_id, code_id).await?;
    let id = ids::new_id();
    let token = workhook_core::token::new_token();
    let (created_at,): (DateTime<Utc>,) = sqlx::query_as(
        "INSERT INTO tokens (hash, project_id, id, code_id) VALUES ($1, $2, $3, $4)
         RETURNING created_at",
    )
    .bind(&workhook_core::token::hash_token(&token)[..])
    .bind(project_id)
    .bind(&id)
    .bind(code_id)
    .fetch_one(pool)
    .await?;
    Ok(pb::WebhookToken {
        id,
        code_id: code_id.to_string(),
        token,
        created_at: ms(created_at),
    })
}

pub async fn list_webhook_tokens(
    pool: &PgPool,
    project_id: &str,
    code_id: &str,
) -> Result<Vec<pb::WebhookToken>> {
    code(pool, project_id, code_id).await?;
    let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, created_at FROM tokens WHERE project_id = $1 AND code_id = $2
         ORDER BY created_at, id",
    )
    .bind(project_id)
    .bind(code_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, created_at)| pb::WebhookToken {
            id,
            code_id: code_id.to_string(),
            token: String::new(),
            created_at: ms(created_at),
        })
        .collect())
}

pub async fn revoke_webhook_token(
    pool: &PgPool,
    project_id: &str,
    code_id: &str,
    token_id: &str,
) -> Result<()> {
    let done = sqlx::query("DELETE FROM tokens WHERE project_id = $1 AND code_id = $2 AND id = $3")
        .bind(project_id)
        .bind(code_id)
        .bind(token_id)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(RegistryError::NotFound("webhook token"));
    }
    Ok(())
}

/// Whether `token` grants access to `project_id`.
pub async fn authenticate(pool: &PgPool, project_id: &str, token: &str) -> Result<bool> {
    let hash = workhook_core::token::hash_token(token);
    let found: Option<(String,)> = sqlx::query_as(
        "SELECT project_id FROM tokens WHERE hash = $1 AND project_id = $2 AND code_id IS NULL",
    )
    .bind(&hash[..])
    .bind(project_id)
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}

#[derive(sqlx::FromRow)]
struct CodeRow {
    id: String,
    project_id: String,
    name: String,
    rev: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    history_id: String,
    command: String,
    config: Option<String>,
    env_vars: sqlx::types::Json<HashMap<String, String>>,
    max_concurrency: Option<i32>,
    retries: i32,
    retries_delay: i32,
    default_priority: i32,
    runtime: String,
    file_name: String,
    checksum: Option<String>,
    package_size: Option<i64>,
    webhook_verify: Option<String>,
}

impl From<CodeRow> for pb::Code {
    fn from(r: CodeRow) -> Self {
        pb::Code {
            id: r.id,
            project_id: r.project_id,
            name: r.name,
            rev: r.rev,
            command: r.command,
            config: r.config,
            env_vars: r.env_vars.0,
            max_concurrency: r.max_concurrency,
            retries: r.retries,
            retries_delay: r.retries_delay,
            default_priority: r.default_priority,
            runtime: r.runtime,
            file_name: r.file_name,
            checksum: r.checksum.unwrap_or_default(),
            package_size: r.package_size.unwrap_or(0),
            created_at: ms(r.created_at),
            updated_at: ms(r.updated_at),
            latest_history_id: r.history_id,
            webhook_verify: r.webhook_verify,
        }
    }
}

const CODE_SELECT: &str = "SELECT c.id, c.project_id, c.name, c.rev, c.created_at, c.updated_at,
        r.id AS history_id, r.command, r.config, r.env_vars, r.max_concurrency, r.retries,
        r.retries_delay, r.default_priority, r.runtime, r.file_name, r.checksum,
        p.size AS package_size, r.webhook_verify::text AS webhook_verify
    FROM codes c
    JOIN code_revisions r ON r.code_id = c.id AND r.rev = c.rev
    LEFT JOIN packages p ON p.checksum = r.checksum";

/// Stores an upload: a new code at revision 1, or a new revision of the code with that name.
pub async fn upload_code(pool: &PgPool, req: pb::UploadCodeRequest) -> Result<pb::Code> {
    let checksum = if req.package.is_empty() {
        None
    } else {
        Some(hex::encode(Sha256::digest(&req.package)))
    };
    let mut tx = pool.begin().await?;
    if let Some(sum) = &checksum {
        sqlx::query(
            "INSERT INTO packages (checksum, data, size) VALUES ($1, $2, $3)
             ON CONFLICT (checksum) DO NOTHING",
        )
        .bind(sum)
        .bind(&req.package[..])
        .bind(req.package.len() as i64)
        .execute(&mut *tx)
        .await?;
    }
    // One statement creates the code or bumps its revision, so concurrent uploads of one name
    // get distinct revisions.
    let (code_id, rev): (String, i32) = sqlx::query_as(
        "INSERT INTO codes (id, project_id, name, rev) VALUES ($1, $2, $3, 1)
         ON CONFLICT (project_id, name)
         DO UPDATE SET rev = codes.rev + 1, updated_at = now()
         RETURNING id, rev",
    )
    .bind(ids::new_id())
    .bind(&req.project_id)
    .bind(&req.name)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO code_revisions (id, code_id, rev, command, config, env_vars,
            max_concurrency, retries, retries_delay, default_priority, runtime, file_name, checksum,
            webhook_verify)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb)",
    )
    .bind(ids::new_id())
    .bind(&code_id)
    .bind(rev)
    .bind(&req.command)
    .bind(&req.config)
    .bind(sqlx::types::Json(&req.env_vars))
    .bind(req.max_concurrency)
    .bind(req.retries)
    .bind(req.retries_delay)
    .bind(req.default_priority)
    .bind(&req.runtime)
    .bind(&req.file_name)
    .bind(&checksum)
    .bind(&req.webhook_verify)
    .execute(&mut *tx)
    .await?;
    let code: CodeRow = sqlx::query_as(&format!("{CODE_SELECT} WHERE c.id = $1"))
        .bind(&code_id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(code.into())
}

pub async fn list_codes(
    pool: &PgPool,
    project_id: &str,
    page: u32,
    per_page: u32,
) -> Result<Vec<pb::Code>> {
    let rows: Vec<CodeRow> = sqlx::query_as(&format!(
        "{CODE_SELECT} WHERE c.project_id = $1 ORDER BY c.created_at, c.id LIMIT $2 OFFSET $3"
    ))
    .bind(project_id)
    .bind(i64::from(per_page))
    .bind(i64::from(page) * i64::from(per_page))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

pub async fn code_by_name(pool: &PgPool, project_id: &str, name: &str) -> Result<pb::Code> {
    let row: Option<CodeRow> = sqlx::query_as(&format!(
        "{CODE_SELECT} WHERE c.project_id = $1 AND c.name = $2"
    ))
    .bind(project_id)
    .bind(name)
    .fetch_optional(pool)
    .await?;
    row.map(Into::into).ok_or(RegistryError::NotFound("code"))
}

pub async fn package(pool: &PgPool, checksum: &str) -> Result<Vec<u8>> {
    let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT data FROM packages WHERE checksum = $1")
        .bind(checksum)
        .fetch_optional(pool)
        .await?;
    row.map(|r| r.0).ok_or(RegistryError::NotFound("package"))
}

#[derive(sqlx::FromRow)]
struct TaskRow {
    id: String,
    project_id: String,
    code_id: String,
    code_name: String,
    code_rev: i32,
    code_history_id: Option<String>,
    status: String,
    priority: i16,
    timeout: i32,
    delay: i32,
    label: Option<String>,
    cluster: String,
    source: String,
    payload: Vec<u8>,
    msg: String,
    error_class: String,
    attempt: i32,
    retry_count: i32,
    percent: i32,
    log_size: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    start_time: Option<DateTime<Utc>>,
    end_time: Option<DateTime<Utc>>,
    retry_of: Option<String>,
    schedule_id: Option<String>,
    verified_by: Option<String>,
    payload_ref: Option<String>,
}

impl From<TaskRow> for pb::Task {
    fn from(r: TaskRow) -> Self {
        pb::Task {
            id: r.id,
            project_id: r.project_id,
            code_id: r.code_id,
            code_name: r.code_name,
            code_rev: r.code_rev,
            code_history_id: r.code_history_id.unwrap_or_default(),
            status: r.status,
            priority: i32::from(r.priority),
            timeout: r.timeout,
            delay: r.delay,
            label: r.label,
            cluster: r.cluster,
            msg: r.msg,
            error_class: r.error_class,
            retry_count: r.retry_count,
            attempt: r.attempt,
            log_size: r.log_size,
            percent: r.percent,
            payload: r.payload.into(),
            created_at: ms(r.created_at),
            updated_at: ms(r.updated_at),
            start_time: opt_ms(r.start_time),
            end_time: opt_ms(r.end_time),
            source: r.source,
            retry_of: r.retry_of,
            schedule_id: r.schedule_id,
            verified_by: r.verified_by,
            payload_ref: r.payload_ref,
        }
    }
}

pub async fn task(pool: &PgPool, project_id: &str, task_id: &str) -> Result<Option<pb::Task>> {
    let row: Option<TaskRow> = sqlx::query_as(
        "SELECT t.*, COALESCE(r.id, t.code_id) AS code_history_id
         FROM tasks t
         LEFT JOIN code_revisions r ON r.code_id = t.code_id AND r.rev = t.code_rev
         WHERE t.id = $1 AND t.project_id = $2",
    )
    .bind(task_id)
    .bind(project_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Into::into))
}

/// The log of the task's current attempt, in the order it was written. `None` when the task does
/// not exist in that project.
pub async fn task_log(
    pool: &PgPool,
    project_id: &str,
    task_id: &str,
    stdout_only: bool,
) -> Result<Option<Vec<Vec<u8>>>> {
    let attempt: Option<(i32,)> =
        sqlx::query_as("SELECT attempt FROM tasks WHERE id = $1 AND project_id = $2")
            .bind(task_id)
            .bind(project_id)
            .fetch_optional(pool)
            .await?;
    let Some((attempt,)) = attempt else {
        return Ok(None);
    };
    let chunks: Vec<(Vec<u8>,)> = sqlx::query_as(
        "SELECT data FROM task_logs
         WHERE task_id = $1 AND attempt = $2 AND ($3 = false OR stream = $4)
         ORDER BY id",
    )
    .bind(task_id)
    .bind(attempt)
    .bind(stdout_only)
    .bind(pb::LogStream::Stdout as i16)
    .fetch_all(pool)
    .await?;
    Ok(Some(chunks.into_iter().map(|c| c.0).collect()))
}

/// One queued task as the recorder or a runner saw it on the stream.
#[derive(Clone, Copy)]
pub struct Queued<'a> {
    pub envelope: &'a pb::Envelope,
    pub payload: &'a [u8],
}

/// Queued tasks as the arrays `workhook_record_tasks` takes (migration 0010).
struct QueuedColumns<'a> {
    id: Vec<&'a str>,
    project: Vec<&'a str>,
    code_id: Vec<&'a str>,
    code_name: Vec<&'a str>,
    code_rev: Vec<i32>,
    priority: Vec<i16>,
    timeout: Vec<i32>,
    delay: Vec<i32>,
    label: Vec<Option<&'a str>>,
    cluster: Vec<&'a str>,
    source: Vec<&'a str>,
    payload: Vec<&'a [u8]>,
    received: Vec<i64>,
    retry_of: Vec<Option<&'a str>>,
    retry_count: Vec<i32>,
    schedule_id: Vec<Option<&'a str>>,
    verified_by: Vec<Option<&'a str>>,
    request: Vec<Option<&'a str>>,
    payload_ref: Vec<Option<&'a str>>,
}

impl<'a> QueuedColumns<'a> {
    fn new<'q: 'a>(batch: impl ExactSizeIterator<Item = Queued<'q>>) -> Self {
        let n = batch.len();
        let mut c = Self {
            id: Vec::with_capacity(n),
            project: Vec::with_capacity(n),
            code_id: Vec::with_capacity(n),
            code_name: Vec::with_capacity(n),
            code_rev: Vec::with_capacity(n),
            priority: Vec::with_capacity(n),
            timeout: Vec::with_capacity(n),
            delay: Vec::with_capacity(n),
            label: Vec::with_capacity(n),
            cluster: Vec::with_capacity(n),
            source: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
            received: Vec::with_capacity(n),
            retry_of: Vec::with_capacity(n),
            retry_count: Vec::with_capacity(n),
            schedule_id: Vec::with_capacity(n),
            verified_by: Vec::with_capacity(n),
            request: Vec::with_capacity(n),
            payload_ref: Vec::with_capacity(n),
        };
        for q in batch {
            let e = q.envelope;
            c.id.push(e.task_id.as_str());
            c.project.push(e.project_id.as_str());
            c.code_id.push(e.code_id.as_str());
            c.code_name.push(e.code_name.as_str());
            c.code_rev.push(e.code_rev);
            c.priority.push(e.priority as i16);
            c.timeout.push(e.timeout);
            c.delay.push(e.delay);
            c.label.push(e.label.as_deref());
            c.cluster.push(e.cluster.as_str());
            c.source.push(e.source.as_str());
            c.payload.push(q.payload);
            c.received.push(e.received_at);
            c.retry_of.push(e.retry_of.as_deref());
            c.retry_count.push(e.retry_count);
            c.schedule_id.push(e.schedule_id.as_deref());
            c.verified_by.push(e.verified_by.as_deref());
            // The request is read back only to publish a delayed task when it is due; any other
            // task's message carries it, so the row (copied on every status change) goes without.
            c.request.push(e.request.as_deref().filter(|_| e.delay > 0));
            c.payload_ref.push(e.payload_ref.as_deref());
        }
        c
    }

    /// Binds the arrays as `$1` to `$19`.
    fn bind<O>(
        self,
        query: sqlx::query::QueryAs<'a, Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'a, Postgres, O, sqlx::postgres::PgArguments> {
        query
            .bind(self.id)
            .bind(self.project)
            .bind(self.code_id)
            .bind(self.code_name)
            .bind(self.code_rev)
            .bind(self.priority)
            .bind(self.timeout)
            .bind(self.delay)
            .bind(self.label)
            .bind(self.cluster)
            .bind(self.source)
            .bind(self.payload)
            .bind(self.received)
            .bind(self.retry_of)
            .bind(self.retry_count)
            .bind(self.schedule_id)
            .bind(self.verified_by)
            .bind(self.request)
            .bind(self.payload_ref)
    }
}

/// Records queued tasks in one statement; a task already recorded (a redelivery, or a runner that
/// recorded it first) is left as it is. Returns how many it recorded.
pub async fn record_queued<'e, E>(executor: E, batch: &[Queued<'_>]) -> Result<u64>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    record(executor, batch, false).await
}

/// Records queued tasks as [`record_queued`] does, but, when the stream goes on holding every one
/// of them, commits without waiting for the WAL to reach the disk (`synchronous_commit = off`
/// for this statement's transaction only). A lookup records the task it finds this way: it
/// waited on the flush otherwise, 0.1-0.6 s when the disk was busy writing a burst's messages
/// (docs/BENCHMARKS.md, round 11). Nothing is at risk: such a task leaves the stream only when a
/// runner has started it, a synchronous commit that flushes the WAL up to and past this row, and
/// a crash that loses the row leaves the task unrecorded in the stream, where the next read
/// records it again. A delayed task is different: the recorder acks it out of the stream once
/// its row exists, so its row is always flushed before the commit returns.
pub async fn record_queued_from_stream(pool: &PgPool, batch: &[Queued<'_>]) -> Result<u64> {
    record(pool, batch, stream_keeps_all(batch)).await
}

/// Whether the stream goes on holding every task of `batch` once it is recorded: true unless one
/// of them is delayed (see [`record_queued_from_stream`]).
fn stream_keeps_all(batch: &[Queued<'_>]) -> bool {
    batch.iter().all(|q| q.envelope.delay <= 0)
}

async fn record<'e, E>(executor: E, batch: &[Queued<'_>], unflushed: bool) -> Result<u64>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let columns = QueuedColumns::new(batch.iter().copied());
    // One call of migration 0010's function; unflushed, the same call behind a set_config(...,
    // true), which holds until the end of the statement's own transaction, whose commit reads it.
    macro_rules! record_tasks {
        () => {
            "SELECT workhook_record_tasks($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                $14, $15, $16, $17, $18, $19)"
        };
    }
    let sql = if unflushed {
        concat!(
            "WITH unflushed AS (SELECT set_config('synchronous_commit', 'off', true)) ",
            record_tasks!(),
            " FROM unflushed"
        )
    } else {
        record_tasks!()
    };
    let (recorded,): (i64,) = columns
        .bind(sqlx::query_as(sql))
        .fetch_one(executor)
        .await?;
    Ok(recorded as u64)
}

#[derive(sqlx::FromRow)]
struct StartRow {
    project_id: String,
    status: String,
    code_id: String,
    timeout: i32,
    lease_left_ms: Option<i64>,
    due_in_ms: i64,
    code_paused: Option<bool>,
    /// The task's code revision, read in the same statement; `None` when it no longer exists.
    command: Option<String>,
    config: Option<String>,
    env_vars: Option<sqlx::types::Json<HashMap<String, String>>>,
    checksum: Option<String>,
    /// The code's current max_concurrency (of its latest revision).
    max_concurrency: Option<i32>,
}

/// How soon a task held back by its code's max_concurrency is offered again.
const CONCURRENCY_RECHECK_MS: i64 = 250;
/// How often a task of a paused code is offered again.
const PAUSED_RECHECK_MS: i64 = 2_000;

/// What the registry tells a runner that took a task from the stream.
pub enum Start {
    Run(pb::Run),
    Skip(String),
    Defer { after_ms: i64, reason: String },
    NeedPayload,
}

/// Decides whether a runner may run a task it took from the stream, and if so, starts a new
/// attempt under a lease. The row lock makes the decision atomic across runners.
pub async fn start_task(
    pool: &PgPool,
    envelope: &pb::Envelope,
    payload: Option<&[u8]>,
    runner_id: &str,
    lease_ms: i64,
) -> Result<Start> {
    let mut tx = pool.begin().await?;
    let mut row = lock_for_start(&mut tx, &envelope.task_id).await?;
    if row.is_none() {
        let Some(payload) = payload else {
            return Ok(Start::NeedPayload);
        };
        record_queued(&mut *tx, &[Queued { envelope, payload }]).await?;
        row = lock_for_start(&mut tx, &envelope.task_id).await?;
    }
    let Some(row) = row else {
        return Err(RegistryError::NotFound("task"));
    };
    if row.project_id != envelope.project_id {
        return Ok(Start::Skip("the envelope names another project".into()));
    }
    match row.status.as_str() {
        "queued" => {}
        "preparing" | "running" => match row.lease_left_ms {
            Some(left) if left > 0 => {
                return Ok(Start::Defer {
                    after_ms: left,
                    reason: "another runner holds the task".into(),
                })
            }
            // The runner that held it stopped renewing its lease: take the task over.
            _ => {}
        },
        finished => return Ok(Start::Skip(finished.to_string())),
    }
    if row.code_paused == Some(true) {
        return Ok(Start::Defer {
            after_ms: PAUSED_RECHECK_MS,
            reason: "the code's task queue is paused".into(),
        });
    }
    if row.due_in_ms > 0 {
        return Ok(Start::Defer {
            after_ms: row.due_in_ms,
            reason: "delayed".into(),
        });
    }
    let (Some(command), Some(env_vars)) = (row.command, row.env_vars) else {
        sqlx::query(
            "UPDATE tasks SET status = 'error', msg = 'The code revision no longer exists.',
                error_class = 'Code Not Found', end_time = now(), updated_at = now()
             WHERE id = $1",
        )
        .bind(&envelope.task_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Start::Skip("error".into()));
    };
    let (config, checksum) = (row.config, row.checksum);
    if let Some(max) = row.max_concurrency.filter(|m| *m > 0) {
        // The code's row lock serializes the starts of its tasks across runners, so the count
        // below cannot be raced past the limit.
        sqlx::query("SELECT 1 FROM codes WHERE id = $1 FOR UPDATE")
            .bind(&row.code_id)
            .execute(&mut *tx)
            .await?;
        let (running,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM tasks
             WHERE code_id = $1 AND status = 'running' AND lease_expires_at > now()",
        )
        .bind(&row.code_id)
        .fetch_one(&mut *tx)
        .await?;
        if running >= i64::from(max) {
            return Ok(Start::Defer {
                after_ms: CONCURRENCY_RECHECK_MS,
                reason: "the code's max_concurrency is reached".into(),
            });
        }
    }
    let task_token = workhook_core::token::new_token();
    let (attempt,): (i32,) = sqlx::query_as(
        "UPDATE tasks SET status = 'running', attempt = attempt + 1, runner_id = $2,
            lease_expires_at = now() + $3 * interval '1 millisecond',
            start_time = now(), updated_at = now(), msg = '', error_class = '',
            task_token_hash = $4
         WHERE id = $1
         RETURNING attempt",
    )
    .bind(&envelope.task_id)
    .bind(runner_id)
    .bind(lease_ms as f64)
    .bind(&workhook_core::token::hash_token(&task_token)[..])
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Start::Run(pb::Run {
        attempt,
        command,
        config,
        env_vars: env_vars.0,
        checksum: checksum.unwrap_or_default(),
        timeout: row.timeout,
        task_token,
    }))
}

/// One StartTask of a batch: the task as the runner took it from the stream.
pub struct BatchStart<'a> {
    pub queued: Queued<'a>,
    pub runner_id: &'a str,
    pub lease_ms: i64,
    /// The new attempt's task token (its hash is stored).
    pub token: &'a str,
}

/// Starts, in one call (workhook_record_and_start_tasks), every task of `starts` that
/// `start_task` would start without a question: queued, of the project the call names, due, of an
/// unpaused code whose latest revision sets no max_concurrency, with its revision still there.
/// A task not recorded yet is recorded first, from the call. Returns the runs by task id (without
/// their task tokens, which the caller holds); a task left out is for `start_task` to decide. The
/// task ids must be distinct.
pub async fn start_batch<'a>(
    pool: &PgPool,
    starts: &[BatchStart<'a>],
) -> Result<HashMap<String, pb::Run>> {
    let columns = QueuedColumns::new(starts.iter().map(|s| s.queued));
    let runner: Vec<&str> = starts.iter().map(|s| s.runner_id).collect();
    let lease: Vec<f64> = starts.iter().map(|s| s.lease_ms as f64).collect();
    let token_hash: Vec<Vec<u8>> = starts
        .iter()
        .map(|s| workhook_core::token::hash_token(s.token).to_vec())
        .collect();
    #[derive(sqlx::FromRow)]
    struct Started {
        id: String,
        attempt: i32,
        command: String,
        config: Option<String>,
        env_vars: sqlx::types::Json<HashMap<String, String>>,
        checksum: Option<String>,
        timeout: i32,
    }
    // The row lock each UPDATE takes makes the start atomic across runners, as in start_task:
    // a task another statement changed first is re-checked against its new version.
    let rows: Vec<Started> = columns
        .bind(sqlx::query_as(
            "SELECT started_id AS id, started_attempt AS attempt, run_command AS command,
                run_config AS config, run_env_vars AS env_vars, run_checksum AS checksum,
                run_timeout AS timeout
             FROM workhook_record_and_start_tasks($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)",
        ))
        .bind(runner)
        .bind(lease)
        .bind(token_hash)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let run = pb::Run {
                attempt: r.attempt,
                command: r.command,
                config: r.config,
                env_vars: r.env_vars.0,
                checksum: r.checksum.unwrap_or_default(),
                timeout: r.timeout,
                task_token: String::new(),
            };
            (r.id, run)
        })
        .collect())
}

async fn lock_for_start(
    tx: &mut Transaction<'_, Postgres>,
    task_id: &str,
) -> Result<Option<StartRow>> {
    Ok(sqlx::query_as(
        "SELECT t.project_id, t.status, t.code_id, t.timeout,
            (EXTRACT(EPOCH FROM (t.lease_expires_at - now())) * 1000)::int8 AS lease_left_ms,
            GREATEST(0, (EXTRACT(EPOCH FROM (t.created_at + t.delay * interval '1 second' - now()))
                * 1000)::int8) AS due_in_ms,
            c.paused AS code_paused,
            r.command, r.config, r.env_vars, r.checksum,
            latest.max_concurrency
         FROM tasks t
         LEFT JOIN codes c ON c.id = t.code_id
         LEFT JOIN code_revisions r ON r.code_id = t.code_id AND r.rev = t.code_rev
         LEFT JOIN code_revisions latest ON latest.code_id = c.id AND latest.rev = c.rev
         WHERE t.id = $1 FOR UPDATE OF t",
    )
    .bind(task_id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Puts a running attempt's task back in the queue (its runner is stopping).
pub async fn release_task(pool: &PgPool, task_id: &str, attempt: i32) -> Result<()> {
    sqlx::query(
        "UPDATE tasks SET status = 'queued', lease_expires_at = NULL, updated_at = now(),
            msg = 'Handed back by a stopping runner'
         WHERE id = $1 AND attempt = $2 AND status = 'running'",
    )
    .bind(task_id)
    .bind(attempt)
    .execute(pool)
    .await?;
    Ok(())
}

/// Renews the lease of a running attempt. False when the attempt no longer holds the task.
pub async fn heartbeat(pool: &PgPool, task_id: &str, attempt: i32, lease_ms: i64) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE tasks SET lease_expires_at = now() + $3 * interval '1 millisecond'
         WHERE id = $1 AND attempt = $2 AND status = 'running'",
    )
    .bind(task_id)
    .bind(attempt)
    .bind(lease_ms as f64)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The outcome of appending log output.
pub struct Appended {
    pub accepted: bool,
    pub log_size: i64,
    pub truncated: bool,
}

/// Appends log output of a running attempt, keeping at most `max_bytes` per task; the first
/// write past the cap is cut and followed by a mark.
pub async fn append_log(
    pool: &PgPool,
    task_id: &str,
    attempt: i32,
    entries: &[pb::LogEntry],
    max_bytes: i64,
) -> Result<Appended> {
    let mut tx = pool.begin().await?;
    let state: Option<(i64, bool)> = sqlx::query_as(
        "SELECT log_size, log_truncated FROM tasks
         WHERE id = $1 AND attempt = $2 AND status = 'running' FOR UPDATE",
    )
    .bind(task_id)
    .bind(attempt)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((mut size, mut truncated)) = state else {
        return Ok(Appended {
            accepted: false,
            log_size: 0,
            truncated: false,
        });
    };
    let mut streams: Vec<i16> = Vec::with_capacity(entries.len() + 1);
    let mut datas: Vec<&[u8]> = Vec::with_capacity(entries.len() + 1);
    let mark;
    for entry in entries {
        if truncated {
            break;
        }
        let room = (max_bytes - size).max(0) as usize;
        let data = &entry.data[..];
        if data.len() <= room {
            streams.push(entry.stream as i16);
            datas.push(data);
            size += data.len() as i64;
        } else {
            if room > 0 {
                streams.push(entry.stream as i16);
                datas.push(&data[..room]);
                size += room as i64;
            }
            truncated = true;
        }
    }
    if truncated && !state.is_some_and(|s| s.1) {
        mark = format!("\n[workhook: log truncated at {max_bytes} bytes]\n");
        streams.push(3);
        datas.push(mark.as_bytes());
    }
    if !datas.is_empty() {
        sqlx::query(
            "INSERT INTO task_logs (task_id, attempt, stream, data)
             SELECT $1, $2, stream, data FROM UNNEST($3::int2[], $4::bytea[]) AS l(stream, data)",
        )
        .bind(task_id)
        .bind(attempt)
        .bind(&streams)
        .bind(&datas)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE tasks SET log_size = $2, log_truncated = $3 WHERE id = $1")
            .bind(task_id)
            .bind(size)
            .bind(truncated)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Appended {
        accepted: true,
        log_size: size,
        truncated,
    })
}

pub const FINAL_STATUSES: [&str; 5] = ["complete", "error", "timeout", "cancelled", "killed"];

/// Records the final status of an attempt, only if that attempt still holds the task. Returns
/// whether it was recorded and the task's status afterwards.
#[derive(sqlx::FromRow)]
struct FinishedRow {
    project_id: String,
    code_id: String,
    code_name: String,
    code_rev: i32,
    priority: i16,
    timeout: i32,
    label: Option<String>,
    cluster: String,
    retry_count: i32,
    payload: Vec<u8>,
    payload_ref: Option<String>,
    schedule_id: Option<String>,
    retries: Option<i32>,
    retries_delay: Option<i32>,
}

/// A recorded final status, not yet committed: when the code asks for retries, the retry must
/// be published (durably) before the commit.
pub struct Finished<'c> {
    pub recorded: bool,
    pub status: String,
    /// The task that retries this one, with its payload, to publish before `commit`.
    pub retry: Option<(Envelope, Vec<u8>)>,
    tx: Option<Transaction<'c, Postgres>>,
}

impl Finished<'_> {
    pub async fn commit(self) -> Result<()> {
        if let Some(tx) = self.tx {
            tx.commit().await?;
        }
        Ok(())
    }
}

/// Records the final status of an attempt, only if that attempt still holds the task. A failed
/// or timed-out task whose code has retries left gets its retry planned: a new task whose id is
/// derived from this one, so publishing it twice queues it once.
pub async fn finish_task<'c>(
    pool: &'c PgPool,
    task_id: &str,
    attempt: i32,
    status: &str,
    msg: &str,
    error_class: &str,
) -> Result<Finished<'c>> {
    if !FINAL_STATUSES.contains(&status) {
        return Err(RegistryError::InvalidArgument(format!(
            "{status:?} is not a final status"
        )));
    }
    if status == "complete" {
        // Nothing to retry: one statement, committed on its own, rather than a transaction
        // held open for a retry's publish.
        let done = sqlx::query(
            "UPDATE tasks SET status = 'complete', msg = $3, error_class = $4, end_time = now(),
                updated_at = now(), lease_expires_at = NULL, percent = 100
             WHERE id = $1 AND attempt = $2 AND status = 'running'",
        )
        .bind(task_id)
        .bind(attempt)
        .bind(msg)
        .bind(error_class)
        .execute(pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(Finished {
                recorded: true,
                status: status.to_string(),
                retry: None,
                tx: None,
            });
        }
        return not_recorded(pool, task_id).await;
    }
    let mut tx = pool.begin().await?;
    let updated: Option<FinishedRow> = sqlx::query_as(
        "UPDATE tasks t SET status = $3, msg = $4, error_class = $5, end_time = now(),
            updated_at = now(), lease_expires_at = NULL,
            percent = CASE WHEN $3 = 'complete' THEN 100 ELSE percent END
         WHERE id = $1 AND attempt = $2 AND status = 'running'
         RETURNING t.project_id, t.code_id, t.code_name, t.code_rev, t.priority, t.timeout,
            t.label, t.cluster, t.retry_count, t.payload, t.payload_ref, t.schedule_id,
            (SELECT r.retries FROM code_revisions r
              WHERE r.code_id = t.code_id AND r.rev = t.code_rev) AS retries,
            (SELECT r.retries_delay FROM code_revisions r
              WHERE r.code_id = t.code_id AND r.rev = t.code_rev) AS retries_delay",
    )
    .bind(task_id)
    .bind(attempt)
    .bind(status)
    .bind(msg)
    .bind(error_class)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = updated {
        let retry = (matches!(status, "error" | "timeout")
            && row.retries.unwrap_or(0) > row.retry_count)
            .then(|| {
                let envelope = Envelope {
                    task_id: ids::id_for_key(&format!("retry/{task_id}")),
                    project_id: row.project_id,
                    code_id: row.code_id,
                    code_name: row.code_name,
                    code_rev: row.code_rev,
                    priority: row.priority.clamp(0, 2) as u8,
                    timeout: row.timeout.max(1) as u32,
                    delay: row.retries_delay.unwrap_or(0).max(0) as u32,
                    label: row.label,
                    cluster: row.cluster,
                    received_at: Utc::now().timestamp_millis(),
                    source: Source::Retry,
                    retry_of: Some(task_id.to_string()),
                    retry_count: (row.retry_count + 1) as u32,
                    schedule_id: row.schedule_id,
                    verified_by: None,
                    request: None,
                    payload_ref: row.payload_ref,
                };
                (envelope, row.payload)
            });
        return Ok(Finished {
            recorded: true,
            status: status.to_string(),
            retry,
            tx: Some(tx),
        });
    }
    drop(tx);
    not_recorded(pool, task_id).await
}

/// One completed attempt of a batch.
pub struct BatchComplete<'a> {
    pub task_id: &'a str,
    pub attempt: i32,
    pub msg: &'a str,
    pub error_class: &'a str,
}

/// Records, in one call (workhook_complete_tasks), every completion whose attempt still holds its task, as
/// `finish_task` does for one; returns the attempt it recorded, by task id (at most one per task:
/// only the attempt that holds a task can be recorded).
pub async fn complete_batch<'a>(
    pool: &PgPool,
    done: impl Iterator<Item = BatchComplete<'a>>,
) -> Result<HashMap<String, i32>> {
    let (lower, _) = done.size_hint();
    let mut id = Vec::with_capacity(lower);
    let mut attempt = Vec::with_capacity(lower);
    let mut msg = Vec::with_capacity(lower);
    let mut error_class = Vec::with_capacity(lower);
    for d in done {
        id.push(d.task_id);
        attempt.push(d.attempt);
        msg.push(d.msg);
        error_class.push(d.error_class);
    }
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT * FROM workhook_complete_tasks($1, $2, $3, $4)")
            .bind(&id)
            .bind(&attempt)
            .bind(&msg)
            .bind(&error_class)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// A task's current status.
pub async fn current_status(pool: &PgPool, task_id: &str) -> Result<String> {
    let current: Option<(String,)> = sqlx::query_as("SELECT status FROM tasks WHERE id = $1")
        .bind(task_id)
        .fetch_optional(pool)
        .await?;
    current
        .map(|(status,)| status)
        .ok_or(RegistryError::NotFound("task"))
}

/// The answer to a report that no longer matches the task's attempt: its current status.
async fn not_recorded<'c>(pool: &PgPool, task_id: &str) -> Result<Finished<'c>> {
    Ok(Finished {
        recorded: false,
        status: current_status(pool, task_id).await?,
        retry: None,
        tx: None,
    })
}

// ---- The rest of the IronWorker v2 API ----

pub async fn code(pool: &PgPool, project_id: &str, code_id: &str) -> Result<pb::Code> {
    let row: Option<CodeRow> = sqlx::query_as(&format!(
        "{CODE_SELECT} WHERE c.project_id = $1 AND c.id = $2"
    ))
    .bind(project_id)
    .bind(code_id)
    .fetch_optional(pool)
    .await?;
    row.map(Into::into).ok_or(RegistryError::NotFound("code"))
}

pub async fn delete_code(pool: &PgPool, project_id: &str, code_id: &str) -> Result<()> {
    let done = sqlx::query("DELETE FROM codes WHERE project_id = $1 AND id = $2")
        .bind(project_id)
        .bind(code_id)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(RegistryError::NotFound("code"));
    }
    Ok(())
}

const REVISION_SELECT: &str = "SELECT c.id, c.project_id, c.name, r.rev, r.created_at,
        r.created_at AS updated_at, r.id AS history_id, r.command, r.config, r.env_vars,
        r.max_concurrency, r.retries, r.retries_delay, r.default_priority, r.runtime, r.file_name,
        r.checksum, p.size AS package_size, r.webhook_verify::text AS webhook_verify
    FROM codes c
    JOIN code_revisions r ON r.code_id = c.id
    LEFT JOIN packages p ON p.checksum = r.checksum";

pub async fn revisions(
    pool: &PgPool,
    project_id: &str,
    code_id: &str,
    page: u32,
    per_page: u32,
) -> Result<Vec<pb::Code>> {
    // Confirms the code exists in the project, so an empty list means "no revisions".
    code(pool, project_id, code_id).await?;
    let rows: Vec<CodeRow> = sqlx::query_as(&format!(
        "{REVISION_SELECT} WHERE c.project_id = $1 AND c.id = $2 ORDER BY r.rev DESC
         LIMIT $3 OFFSET $4"
    ))
    .bind(project_id)
    .bind(code_id)
    .bind(i64::from(per_page))
    .bind(i64::from(page) * i64::from(per_page))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

pub async fn revision(
    pool: &PgPool,
    project_id: &str,
    code_id: &str,
    rev: i32,
) -> Result<pb::Code> {
    if rev <= 0 {
        return code(pool, project_id, code_id).await;
    }
    let row: Option<CodeRow> = sqlx::query_as(&format!(
        "{REVISION_SELECT} WHERE c.project_id = $1 AND c.id = $2 AND r.rev = $3"
    ))
    .bind(project_id)
    .bind(code_id)
    .bind(rev)
    .fetch_optional(pool)
    .await?;
    row.map(Into::into)
        .ok_or(RegistryError::NotFound("revision"))
}

pub async fn code_stats(
    pool: &PgPool,
    project_id: &str,
    code_id: &str,
) -> Result<HashMap<String, i64>> {
    code(pool, project_id, code_id).await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM tasks WHERE project_id = $1 AND code_id = $2 GROUP BY status",
    )
    .bind(project_id)
    .bind(code_id)
    .fetch_all(pool)
    .await?;
    let mut counts: HashMap<String, i64> = [
        "queued",
        "running",
        "complete",
        "error",
        "cancelled",
        "killed",
        "timeout",
    ]
    .into_iter()
    .map(|s| (s.to_string(), 0))
    .collect();
    for (status, n) in rows {
        counts.insert(status, n);
    }
    Ok(counts)
}

pub async fn set_code_paused(
    pool: &PgPool,
    project_id: &str,
    code_id: &str,
    paused: bool,
) -> Result<()> {
    let done = sqlx::query("UPDATE codes SET paused = $3 WHERE project_id = $1 AND id = $2")
        .bind(project_id)
        .bind(code_id)
        .bind(paused)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(RegistryError::NotFound("code"));
    }
    Ok(())
}

/// Cancels every queued task of a code; returns how many.
pub async fn cancel_all(pool: &PgPool, project_id: &str, code_id: &str) -> Result<i64> {
    code(pool, project_id, code_id).await?;
    let done = sqlx::query(
        "UPDATE tasks SET status = 'cancelled', msg = 'Cancelled', end_time = now(), updated_at = now()
         WHERE project_id = $1 AND code_id = $2 AND status = 'queued'",
    )
    .bind(project_id)
    .bind(code_id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() as i64)
}

pub async fn list_tasks(
    pool: &PgPool,
    req: &pb::ListTasksRequest,
    per_page: u32,
) -> Result<Vec<pb::Task>> {
    let rows: Vec<TaskRow> = sqlx::query_as(
        "SELECT t.*, COALESCE(r.id, t.code_id) AS code_history_id
         FROM tasks t
         LEFT JOIN code_revisions r ON r.code_id = t.code_id AND r.rev = t.code_rev
         WHERE t.project_id = $1
           AND ($2 = '' OR t.code_name = $2)
           AND (cardinality($3::text[]) = 0 OR t.status = ANY($3))
           AND ($4 = 0 OR t.created_at >= to_timestamp($4))
           AND ($5 = 0 OR t.created_at <= to_timestamp($5))
           AND ($6::text IS NULL OR t.label = $6)
         ORDER BY t.created_at DESC, t.id DESC
         LIMIT $7 OFFSET $8",
    )
    .bind(&req.project_id)
    .bind(&req.code_name)
    .bind(&req.statuses)
    .bind(req.from_time)
    .bind(req.to_time)
    .bind(&req.label)
    .bind(i64::from(per_page))
    .bind(i64::from(req.page) * i64::from(per_page))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Cancels a task that has not finished. A queued task will never start; a running one is
/// stopped by its runner at its next heartbeat. Returns the status after the call.
pub async fn cancel_task(pool: &PgPool, project_id: &str, task_id: &str) -> Result<Option<String>> {
    // The row may be recorded between the UPDATE and the SELECT below: then try again.
    for _ in 0..3 {
        match cancel_task_once(pool, project_id, task_id).await? {
            Some(status) if matches!(status.as_str(), "queued" | "preparing" | "running") => {}
            other => return Ok(other),
        }
    }
    cancel_task_once(pool, project_id, task_id).await
}

async fn cancel_task_once(
    pool: &PgPool,
    project_id: &str,
    task_id: &str,
) -> Result<Option<String>> {
    let updated: Option<(String,)> = sqlx::query_as(
        "UPDATE tasks SET status = 'cancelled', msg = 'Cancelled', end_time = now(),
            updated_at = now(), lease_expires_at = NULL
         WHERE id = $1 AND project_id = $2 AND status IN ('queued', 'preparing', 'running')
         RETURNING status",
    )
    .bind(task_id)
    .bind(project_id)
    .fetch_optional(pool)
    .await?;
    if let Some((status,)) = updated {
        return Ok(Some(status));
    }
    let current: Option<(String,)> =
        sqlx::query_as("SELECT status FROM tasks WHERE id = $1 AND project_id = $2")
            .bind(task_id)
            .bind(project_id)
            .fetch_optional(pool)
            .await?;
    Ok(current.map(|c| c.0))
}

pub async fn set_progress(
    pool: &PgPool,
    project_id: &str,
    task_id: &str,
    percent: i32,
    msg: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE tasks SET percent = $3, msg = $4, updated_at = now()
         WHERE id = $1 AND project_id = $2",
    )
    .bind(task_id)
    .bind(project_id)
    .bind(percent)
    .bind(msg)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[derive(sqlx::FromRow)]
struct ScheduleRow {
    id: String,
    project_id: String,
    code_name: String,
    name: String,
    payload: Vec<u8>,
    start_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
    run_every: Option<i32>,
    run_times: Option<i32>,
    priority: i16,
    timeout: i32,
    delay: i32,
    cluster: String,
    label: Option<String>,
    cron: Option<String>,
    status: String,
    msg: String,
    run_count: i32,
    error_count: i32,
    last_run_time: Option<DateTime<Utc>>,
    next_start: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<ScheduleRow> for pb::Schedule {
    fn from(r: ScheduleRow) -> Self {
        pb::Schedule {
            id: r.id,
            project_id: r.project_id,
            spec: Some(pb::ScheduleSpec {
                code_name: r.code_name,
                payload: r.payload.into(),
                name: r.name,
                start_at: opt_ms(r.start_at),
                end_at: opt_ms(r.end_at),
                run_every: r.run_every.unwrap_or(0),
                run_times: r.run_times.unwrap_or(0),
                priority: i32::from(r.priority),
                timeout: r.timeout,
                delay: r.delay,
                cluster: r.cluster,
                label: r.label,
                cron: r.cron.unwrap_or_default(),
            }),
            status: r.status,
            msg: r.msg,
            run_count: r.run_count,
            error_count: r.error_count,
            last_run_time: opt_ms(r.last_run_time),
            next_start: opt_ms(r.next_start),
            created_at: ms(r.created_at),
            updated_at: ms(r.updated_at),
        }
    }
}

fn ts(ms: i64) -> Option<DateTime<Utc>> {
    (ms > 0)
        .then(|| DateTime::<Utc>::from_timestamp_millis(ms))
        .flatten()
}

pub async fn create_schedules(
    pool: &PgPool,
    project_id: &str,
    specs: &[pb::ScheduleSpec],
) -> Result<Vec<String>> {
    let mut tx = pool.begin().await?;
    let mut ids = Vec::with_capacity(specs.len());
    for spec in specs {
        let id = ids::new_id();
        sqlx::query(
            "INSERT INTO schedules (id, project_id, code_name, name, payload, start_at, end_at,
                run_every, run_times, priority, timeout, delay, cluster, label, cron, next_start)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(&id)
        .bind(project_id)
        .bind(&spec.code_name)
        .bind(&spec.name)
        .bind(&spec.payload[..])
        .bind(ts(spec.start_at))
        .bind(ts(spec.end_at))
        .bind((spec.run_every > 0).then_some(spec.run_every))
        .bind((spec.run_times > 0).then_some(spec.run_times))
        .bind(spec.priority as i16)
        .bind(spec.timeout)
        .bind(spec.delay)
        .bind(&spec.cluster)
        .bind(&spec.label)
        .bind((!spec.cron.is_empty()).then_some(&spec.cron))
        .bind(first_start(spec)?)
        .execute(&mut *tx)
        .await?;
        ids.push(id);
    }
    tx.commit().await?;
    Ok(ids)
}

pub async fn list_schedules(
    pool: &PgPool,
    project_id: &str,
    page: u32,
    per_page: u32,
) -> Result<Vec<pb::Schedule>> {
    let rows: Vec<ScheduleRow> = sqlx::query_as(
        "SELECT * FROM schedules WHERE project_id = $1 ORDER BY created_at, id LIMIT $2 OFFSET $3",
    )
    .bind(project_id)
    .bind(i64::from(per_page))
    .bind(i64::from(page) * i64::from(per_page))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

pub async fn schedule(pool: &PgPool, project_id: &str, schedule_id: &str) -> Result<pb::Schedule> {
    let row: Option<ScheduleRow> =
        sqlx::query_as("SELECT * FROM schedules WHERE project_id = $1 AND id = $2")
            .bind(project_id)
            .bind(schedule_id)
            .fetch_optional(pool)
            .await?;
    row.map(Into::into)
        .ok_or(RegistryError::NotFound("schedule"))
}

pub async fn update_schedule(
    pool: &PgPool,
    project_id: &str,
    schedule_id: &str,
    spec: &pb::ScheduleSpec,
) -> Result<()> {
    let done = sqlx::query(
        "UPDATE schedules SET code_name = $3, name = $4, payload = $5, start_at = $6, end_at = $7,
            run_every = $8, run_times = $9, priority = $10, timeout = $11, delay = $12,
            cluster = $13, label = $14, cron = $15, updated_at = now(), next_start = $16
         WHERE project_id = $1 AND id = $2 AND status = 'scheduled'",
    )
    .bind(project_id)
    .bind(schedule_id)
    .bind(&spec.code_name)
    .bind(&spec.name)
    .bind(&spec.payload[..])
    .bind(ts(spec.start_at))
    .bind(ts(spec.end_at))
    .bind((spec.run_every > 0).then_some(spec.run_every))
    .bind((spec.run_times > 0).then_some(spec.run_times))
    .bind(spec.priority as i16)
    .bind(spec.timeout)
    .bind(spec.delay)
    .bind(&spec.cluster)
    .bind(&spec.label)
    .bind((!spec.cron.is_empty()).then_some(&spec.cron))
    .bind(first_start(spec)?)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(RegistryError::NotFound("schedule"));
    }
    Ok(())
}

/// When a new (or updated) schedule first runs: its start_at (now if unset), or for a cron
/// schedule the first time the expression names at or after that.
fn first_start(spec: &pb::ScheduleSpec) -> Result<DateTime<Utc>> {
    let from = ts(spec.start_at).unwrap_or_else(Utc::now).max(Utc::now());
    if spec.cron.is_empty() {
        return Ok(ts(spec.start_at).unwrap_or_else(Utc::now));
    }
    crate::scheduler::next_cron(&spec.cron, from - chrono::Duration::seconds(1))
        .ok_or_else(|| RegistryError::InvalidArgument("cron names no time in the future".into()))
}

pub async fn cancel_schedule(pool: &PgPool, project_id: &str, schedule_id: &str) -> Result<()> {
    let done = sqlx::query(
        "UPDATE schedules SET status = 'cancelled', msg = 'Cancelled', next_start = NULL,
            updated_at = now()
         WHERE project_id = $1 AND id = $2",
    )
    .bind(project_id)
    .bind(schedule_id)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(RegistryError::NotFound("schedule"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(envelope: &pb::Envelope) -> Queued<'_> {
        Queued {
            envelope,
            payload: b"{}",
        }
    }

    #[test]
    fn only_a_batch_without_delayed_tasks_may_commit_unflushed() {
        let now = pb::Envelope::default();
        let delayed = pb::Envelope {
            delay: 60,
            ..Default::default()
        };
        assert!(stream_keeps_all(&[queued(&now), queued(&now)]));
        assert!(!stream_keeps_all(&[queued(&delayed)]));
        assert!(!stream_keeps_all(&[queued(&now), queued(&delayed)]));
    }
}
