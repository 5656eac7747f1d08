//! The routes of the IronWorker v2 API that the ingress serves.

use std::sync::atomic::Ordering;
use tracing::Instrument;

use axum::{
    body::Body,
    extract::{multipart::Multipart, rejection::QueryRejection, Path, Query, State},
    http::{header, HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Json,
};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use workhook_core::{ids, Envelope, Source};
use workhook_proto as pb;

use crate::error::{ApiError, ApiResult};
use crate::legacy;
use crate::state::{App, CodeRef, TaskIdKind, Verification};
use crate::views::{CodeView, TaskView};

/// IronWorker's limits.
pub const MAX_TIMEOUT: u32 = 3600;
pub const MAX_DELAY: u32 = 604_800;
const MAX_CONFIG_BYTES: usize = 64 * 1024;
const MAX_RETRIES: i32 = 10;

/// A task's options after validation.
#[derive(Debug, PartialEq)]
pub struct TaskOptions {
    pub priority: u8,
    pub timeout: u32,
    pub delay: u32,
    pub label: Option<String>,
    pub cluster: String,
}

/// Options as they arrive: numbers may be floats (the clients send them), strings may be null.
#[derive(Debug, Default, Deserialize)]
pub struct RawOptions {
    pub priority: Option<f64>,
    pub timeout: Option<f64>,
    pub delay: Option<f64>,
    pub label: Option<String>,
    pub cluster: Option<String>,
}

fn whole(v: f64, field: &str, min: f64, max: f64) -> ApiResult<u32> {
    if !v.is_finite() || v < min || v > max {
        return Err(ApiError::BadRequest(format!(
            "{field} must be between {min} and {max}"
        )));
    }
    Ok(v.round() as u32)
}

impl RawOptions {
    pub fn validate(self, default_priority: u8) -> ApiResult<TaskOptions> {
        let priority = match self.priority {
            None => default_priority,
            Some(p) if p == 0.0 || p == 1.0 || p == 2.0 => p as u8,
            Some(_) => return Err(ApiError::BadRequest("priority must be 0, 1 or 2".into())),
        };
        let timeout = match self.timeout {
            None => MAX_TIMEOUT,
            Some(0.0) => MAX_TIMEOUT,
            Some(t) => whole(t, "timeout", 1.0, f64::from(MAX_TIMEOUT))?,
        };
        let delay = match self.delay {
            None => 0,
            Some(d) => whole(d, "delay", 0.0, f64::from(MAX_DELAY))?,
        };
        let label = self.label.filter(|l| !l.is_empty());
        if label.as_ref().is_some_and(|l| l.len() > 256) {
            return Err(ApiError::BadRequest(
                "label is longer than 256 bytes".into(),
            ));
        }
        let cluster = self
            .cluster
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "default".into());
        if cluster.len() > 64 {
            return Err(ApiError::BadRequest(
                "cluster is longer than 64 bytes".into(),
            ));
        }
        Ok(TaskOptions {
            priority,
            timeout,
            delay,
            label,
            cluster,
        })
    }
}

/// The id a new task starts with: none (it is named by its stream sequence once JetStream
/// stores it, and needs no subject of its own), unless it waits: a delayed task is recorded by
/// its id as it arrives.
fn fresh_task_id(delay: u32) -> String {
    if delay > 0 {
        ids::new_id()
    } else {
        String::new()
    }
}

pub(crate) fn envelope(
    project_id: &str,
    code: &CodeRef,
    options: TaskOptions,
    source: Source,
) -> Envelope {
    Envelope {
        task_id: fresh_task_id(options.delay),
        project_id: project_id.to_string(),
        code_id: code.id.clone(),
        code_name: code.name.clone(),
        code_rev: code.rev,
        priority: options.priority,
        timeout: options.timeout,
        delay: options.delay,
        label: options.label,
        cluster: options.cluster,
        received_at: chrono::Utc::now().timestamp_millis(),
        source,
        retry_of: None,
        retry_count: 0,
        schedule_id: None,
        verified_by: None,
        request: None,
        payload_ref: None,
    }
}

/// Reads a whole body, refusing with 413 (never truncating) one larger than `limit`: at once
/// when Content-Length says so, otherwise as soon as a chunked body passes it.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Bytes> {
    use http_body_util::BodyExt;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    if declared.is_some_and(|n| n > limit as u64) {
        discard(body).await;
        return Err(ApiError::PayloadTooLarge(limit));
    }
    // A body that arrives in one piece (the common case) is kept as it is, without a copy.
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut size = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            size += data.len();
            if size > limit {
                discard(body).await;
                return Err(ApiError::PayloadTooLarge(limit));
            }
            pieces.push(data);
        }
    }
    Ok(match pieces.len() {
        0 => Bytes::new(),
        1 => pieces.pop().unwrap_or_default(),
        _ => {
            let mut whole = bytes::BytesMut::with_capacity(size);
            for piece in pieces {
                whole.extend_from_slice(&piece);
            }
            whole.freeze()
        }
    })
}

/// Reads and drops the rest of a refused body (at most `DISCARD_BYTES`, for at most
/// `DISCARD_TIME`), so the sender, still writing, gets the 413 rather than a broken connection.
async fn discard(mut body: Body) {
    use http_body_util::BodyExt;
    const DISCARD_BYTES: usize = 64 * 1024 * 1024;
    const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(2);
    let _ = tokio::time::timeout(DISCARD_TIME, async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen > DISCARD_BYTES {
                    break;
                }
            }
        }
    })
    .await;
}

pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {}", e.body_text())))
}

pub(crate) fn require_json(headers: &HeaderMap) -> ApiResult<()> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if json {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable(
            "Content-Type must be application/json".into(),
        ))
    }
}

/// A webhook URL's query string.
#[derive(Debug, Default, PartialEq)]
pub struct WebhookQuery {
    code_name: Option<String>,
    oauth: Option<String>,
    priority: Option<String>,
    timeout: Option<String>,
    delay: Option<String>,
    label: Option<String>,
    cluster: Option<String>,
}

impl WebhookQuery {
    /// Read by hand, as it is on every webhook: axum's `Query` (serde_urlencoded behind
    /// serde_path_to_error) took 2.7% of the ingress's CPU in a profile of the benchmark. As
    /// there, other keys are ignored and a key given twice is refused.
    pub fn parse(query: Option<&str>) -> ApiResult<Self> {
        let mut q = Self::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let field = match &*key {
                "code_name" => &mut q.code_name,
                "oauth" => &mut q.oauth,
                "priority" => &mut q.priority,
                "timeout" => &mut q.timeout,
                "delay" => &mut q.delay,
                "label" => &mut q.label,
                "cluster" => &mut q.cluster,
                _ => continue,
            };
            if field.is_some() {
                return Err(ApiError::BadRequest(format!(
                    "bad query string: {key} is given more than once"
                )));
            }
            *field = Some(value.into_owned());
        }
        Ok(q)
    }
}

fn number(v: Option<String>, field: &str) -> ApiResult<Option<f64>> {
    v.filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<f64>()
                .map_err(|_| ApiError::BadRequest(format!("{field} must be a number")))
        })
        .transpose()
}

/// `POST /2/projects/{P}/tasks/webhook?code_name=X`: the raw body becomes the payload of a new
/// task; the answer comes only once JetStream holds it. With traces on, the `webhook` span is the
/// root of the task's trace: its context travels with the message to the runner.
pub async fn webhook(
    State(app): State<App>,
    Path(project_id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Queued> {
    let q = WebhookQuery::parse(uri.query());
    // With traces off, the span would only repeat what the few log lines of this path carry
    // themselves, at a cost on every webhook: it exists for traces.
    let span = if workhook_core::telemetry::tracing_enabled() {
        tracing::info_span!(
            "webhook",
            otel.kind = "server",
            %project_id,
            code_name = q.as_ref().map_or("", |q| q.code_name.as_deref().unwrap_or("")),
            task_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    } else {
        tracing::Span::none()
    };
    async move {
        workhook_core::telemetry::record_trace_id(&tracing::Span::current());
        let answer = queue_webhook(&app, project_id, q, method, uri, headers, body).await;
        app.metrics.webhook(answer.as_ref().map(|_| ()));
        record_answer(&answer);
        answer
    }
    .instrument(span)
    .await
}

/// The answer's status on the current (request) span, for its trace; a 5xx marks the span as
/// failed.
fn record_answer<T>(answer: &ApiResult<T>) {
    if !workhook_core::telemetry::tracing_enabled() {
        return;
    }
    let status = match answer {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status(),
    };
    let span = tracing::Span::current();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

async fn queue_webhook(
    app: &App,
    project_id: String,
    q: ApiResult<WebhookQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Queued> {
    let q = q?;
    let code_name = q
        .code_name
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::BadRequest("code_name is required".into()))?;
    app.authorize_webhook(&project_id, &code_name, &headers, q.oauth.as_deref())
        .await?;
    app.rate_limit(&project_id)?;
    let code = app.code(&project_id, &code_name).await?;
    let options = RawOptions {
        priority: number(q.priority, "priority")?,
        timeout: number(q.timeout, "timeout")?,
        delay: number(q.delay, "delay")?,
        label: q.label,
        cluster: q.cluster,
    }
    .validate(code.default_priority)?;
    let payload = read_body(&headers, body, app.max_body_bytes).await?;
    // The raw bytes are verified before anything parses them.
    let verified = match &code.verification {
        Verification::None => None,
        Verification::Configured(v) => {
            match v.verify(&headers, &payload, chrono::Utc::now().timestamp()) {
                Ok(verified) => Some(verified),
                Err(e) => {
                    tracing::info!(%project_id, code = %code.name, reason = %e.reason(), "webhook refused");
                    return Err(ApiError::Unauthorized);
                }
            }
        }
        Verification::Broken => return Err(ApiError::Unauthorized),
    };
    let mut envelope = envelope(&project_id, &code, options, Source::Webhook);
    let delivery_id = verified
        .as_ref()
        .and_then(|v| v.delivery_id.as_deref())
        .or_else(|| delivery_id(&headers));
    let id = match delivery_id {
        // The same delivery to the same code is the same task, within JetStream's duplicate
        // window (Nats-Msg-Id) and beyond it (the registry records an id once, and a finished
        // task is never run again).
        Some(delivery) => {
            envelope.task_id = ids::id_for_key(&format!("{project_id}/{}/{delivery}", code.id));
            TaskIdKind::FromDelivery
        }
        None => TaskIdKind::Fresh,
    };
    envelope.verified_by = verified.map(|v| v.scheme.to_string());
    envelope.request = Some(worker_request(&method, &uri, &headers));
    let task_id = app.publish_large(&mut envelope, payload, id).await?;
    tracing::Span::current().record("task_id", task_id.as_str());
    Ok(Queued(task_id))
}

/// A queued webhook's answer, `{"id": "<task id>", "msg": "Queued up."}`, written straight into
/// its body (through a `serde_json::Value` it took a map and four strings per webhook).
pub struct Queued(pub String);

impl IntoResponse for Queued {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(48 + self.0.len());
        body.extend_from_slice(b"{\"id\":");
        json_string(&mut body, &self.0);
        body.extend_from_slice(b",\"msg\":\"Queued up.\"}");
        (
            [(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    }
}

/// The headers senders use for the id of a delivery, in order of preference.
const DELIVERY_ID_HEADERS: [&str; 4] = [
    "x-github-delivery",
    "webhook-id",
    "iron-message-id",
    "idempotency-key",
];
const MAX_DELIVERY_ID: usize = 256;

fn delivery_id(headers: &HeaderMap) -> Option<&str> {
    DELIVERY_ID_HEADERS.iter().find_map(|name| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= MAX_DELIVERY_ID)
    })
}

/// Headers a worker never sees: credentials, and hop-by-hop headers that describe the
/// connection to the ingress rather than the webhook.
const HIDDEN_HEADERS: [&str; 11] = [
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
    "proxy-authenticate",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What the worker gets of the webhook request besides its body (in `WORKHOOK_REQUEST_FILE`):
/// the method, the query without the token, the content type and the headers, less
/// credentials and hop-by-hop headers.
pub fn worker_request(method: &Method, uri: &Uri, headers: &HeaderMap) -> String {
    // Written straight into one buffer: this runs for every webhook.
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"{\"method\":");
    json_string(&mut out, method.as_str());
    out.extend_from_slice(b",\"query\":\"");
    let mut first = true;
    for pair in uri.query().unwrap_or("").split('&') {
        if pair.is_empty() || pair.starts_with("oauth=") {
            continue;
        }
        if !first {
            out.push(b'&');
        }
        first = false;
        json_string_body(&mut out, pair);
    }
    out.extend_from_slice(b"\",\"content_type\":");
    match headers.get(header::CONTENT_TYPE) {
        Some(v) => json_string(&mut out, &String::from_utf8_lossy(v.as_bytes())),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"headers\":{");
    let mut first = true;
    for name in headers.keys() {
        if HIDDEN_HEADERS.contains(&name.as_str()) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        json_string(&mut out, name.as_str());
        out.extend_from_slice(b":\"");
        for (i, v) in headers.get_all(name).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            json_string_body(&mut out, &String::from_utf8_lossy(v.as_bytes()));
        }
        out.push(b'"');
    }
    out.extend_from_slice(b"}}");
    // Every piece is valid UTF-8 and JSON-escaped.
    String::from_utf8(out).unwrap_or_default()
}

/// `s` as a JSON string, quotes included.
fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    json_string_body(out, s);
    out.push(b'"');
}

/// `s` escaped for the inside of a JSON string.
fn json_string_body(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x00..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..i]);
        plain = i + 1;
        if escaped.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escaped);
        }
    }
    out.extend_from_slice(&bytes[plain..]);
}

#[derive(Debug, Deserialize)]
struct QueueRequest {
    tasks: Option<Vec<QueueTask>>,
}

#[derive(Debug, Deserialize)]
struct QueueTask {
    code_name: Option<String>,
    payload: Option<Value>,
    #[serde(flatten)]
    options: RawOptions,
}

/// `POST /2/projects/{P}/tasks`: queues a batch of tasks, as the official clients send it. Each
/// task's trace starts at the `queue_tasks` span.
#[tracing::instrument(name = "queue_tasks", skip_all, fields(
    otel.kind = "server",
    %project_id,
    tasks = tracing::field::Empty,
    trace_id = tracing::field::Empty,
    http.response.status_code = tracing::field::Empty,
    otel.status_code = tracing::field::Empty,
))]
pub async fn queue_tasks(
    State(app): State<App>,
    Path(project_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    workhook_core::telemetry::record_trace_id(&tracing::Span::current());
    let answer = queue_batch(app, project_id, headers, body).await;
    record_answer(&answer);
    answer
}

async fn queue_batch(
    app: App,
    project_id: String,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    app.authorize(&project_id, &headers, None).await?;
    require_json(&headers)?;
    let body = read_body(&headers, body, app.max_json_bytes).await?;
    let request: QueueRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    let tasks = request
        .tasks
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::BadRequest("tasks must hold at least one task".into()))?;
    tracing::Span::current().record("tasks", tasks.len());
    for _ in &tasks {
        app.rate_limit(&project_id)?;
    }
    let mut queued = Vec::with_capacity(tasks.len());
    for task in tasks {
        let code_name = task
            .code_name
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ApiError::BadRequest("every task needs a code_name".into()))?;
        let code = app.code(&project_id, &code_name).await?;
        let options = task.options.validate(code.default_priority)?;
        let payload = match task.payload {
            None | Some(Value::Null) => Bytes::new(),
            Some(Value::String(s)) => Bytes::from(s),
            Some(other) => Bytes::from(other.to_string()),
        };
        queued.push((envelope(&project_id, &code, options, Source::Api), payload));
    }
    // Publish the whole batch at once, then wait for every acknowledgement.
    let acks = futures_util::future::join_all(
        queued
            .iter()
            .map(|(envelope, payload)| app.publish(envelope, payload.clone(), TaskIdKind::Fresh)),
    )
    .await;
    let ids: Vec<Value> = acks
        .into_iter()
        .map(|id| id.map(|id| json!({ "id": id })))
        .collect::<ApiResult<_>>()?;
    Ok(Json(json!({ "msg": "Queued up", "tasks": ids })))
}

/// `GET /2/projects/{P}/tasks/{T}`.
pub async fn get_task(
    State(app): State<App>,
    Path((project_id, task_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<TaskView>> {
    app.authorize(&project_id, &headers, None).await?;
    let task = app
        .registry
        .clone()
        .get_task(pb::GetTaskRequest {
            project_id,
            task_id,
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Task"))?
        .into_inner();
    Ok(Json(task.into()))
}

async fn log(
    app: App,
    project_id: String,
    task_id: String,
    stdout_only: bool,
) -> ApiResult<Response> {
    let mut chunks = app
        .registry
        .clone()
        .get_task_log(pb::GetTaskLogRequest {
            project_id,
            task_id,
            stdout_only,
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Task"))?
        .into_inner();
    // Read the first piece before answering, so a failure is still a clear status.
    let first = chunks
        .message()
        .await
        .map_err(|s| ApiError::from_registry(s, "Task"))?;
    let rest = chunks.map(|c| c.map(|c| c.data));
    let body = futures_util::stream::iter(first.map(|c| Ok(c.data))).chain(rest);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response())
}

/// `GET /2/projects/{P}/tasks/{T}/log`: stdout and stderr, as text, whatever Accept says.
pub async fn task_log(
    State(app): State<App>,
    Path((project_id, task_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    app.authorize(&project_id, &headers, None).await?;
    log(app, project_id, task_id, false).await
}

/// `GET /2/projects/{P}/tasks/{T}/outlog`: stdout only.
pub async fn task_outlog(
    State(app): State<App>,
    Path((project_id, task_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    app.authorize(&project_id, &headers, None).await?;
    log(app, project_id, task_id, true).await
}

#[derive(Debug, Default, Deserialize)]
pub struct Paging {
    page: Option<u32>,
    per_page: Option<u32>,
}

impl Paging {
    /// IronWorker's paging: page 0-100, per_page 1-100 (default 30).
    pub fn validate(&self) -> ApiResult<(u32, u32)> {
        let page = self.page.unwrap_or(0);
        let per_page = self.per_page.unwrap_or(30);
        if page > 100 || per_page == 0 || per_page > 100 {
            return Err(ApiError::BadRequest(
                "page must be 0-100 and per_page 1-100".into(),
            ));
        }
        Ok((page, per_page))
    }
}

/// `GET /2/projects/{P}/codes`.
pub async fn list_codes(
    State(app): State<App>,
    Path(project_id): Path<String>,
    q: Result<Query<Paging>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let (page, per_page) = query(q)?.validate()?;
    app.authorize(&project_id, &headers, None).await?;
    let codes = app
        .registry
        .clone()
        .list_codes(pb::ListCodesRequest {
            project_id,
            page,
            per_page,
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Project"))?
        .into_inner()
        .codes;
    let codes: Vec<CodeView> = codes.into_iter().map(Into::into).collect();
    Ok(Json(json!({ "codes": codes })))
}

/// The `data` part of a code upload.
#[derive(Debug, Default, Deserialize)]
struct UploadData {
    name: Option<String>,
    command: Option<String>,
    runtime: Option<String>,
    file_name: Option<String>,
    config: Option<Value>,
    env_vars: Option<serde_json::Map<String, Value>>,
    max_concurrency: Option<f64>,
    retries: Option<f64>,
    retries_delay: Option<f64>,
    default_priority: Option<f64>,
    webhook_verify: Option<Value>,
}

fn upload_request(
    project_id: String,
    data: UploadData,
    package: Vec<u8>,
) -> ApiResult<pb::UploadCodeRequest> {
    let name = data
        .name
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::BadRequest("data.name is required".into()))?;
    let runtime = data.runtime.unwrap_or_default();
    let file_name = data.file_name.unwrap_or_default();
    let command = match data.command.filter(|c| !c.trim().is_empty()) {
        Some(c) => c,
        None => legacy::command_for_runtime(&runtime, &file_name).ok_or_else(|| {
            ApiError::BadRequest("data needs a command (or a known runtime and a file_name)".into())
        })?,
    };
    let config = match data.config {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    };
    if config.as_ref().is_some_and(|c| c.len() > MAX_CONFIG_BYTES) {
        return Err(ApiError::BadRequest("config is larger than 64 KB".into()));
    }
    let env_vars = data
        .env_vars
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect();
    let int = |v: Option<f64>, field: &str, min: f64, max: f64| -> ApiResult<i32> {
        match v {
            None => Ok(0),
            Some(n) if n.is_finite() && n >= min && n <= max => Ok(n.round() as i32),
            Some(_) => Err(ApiError::BadRequest(format!(
                "{field} must be between {min} and {max}"
            ))),
        }
    };
    // IronWorker spells "unlimited" as an absent field, 0 or -1.
    let max_concurrency = match data.max_concurrency {
        Some(n) if n >= 1.0 => Some(int(Some(n), "max_concurrency", 1.0, 1e6)?),
        _ => None,
    };
    let webhook_verify = match data.webhook_verify {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            crate::verify::WebhookVerify::from_json(&v)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?
                .to_json()
                .to_string(),
        ),
    };
    Ok(pb::UploadCodeRequest {
        project_id,
        name,
        webhook_verify,
        command,
        config,
        env_vars,
        max_concurrency,
        retries: int(data.retries, "retries", 0.0, f64::from(MAX_RETRIES))?,
        retries_delay: int(
            data.retries_delay,
            "retries_delay",
            0.0,
            f64::from(MAX_DELAY),
        )?,
        default_priority: int(data.default_priority, "default_priority", 0.0, 2.0)?,
        runtime,
        file_name,
        package: package.into(),
    })
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(limit)
    } else {
        ApiError::BadRequest(format!("bad multipart body: {}", e.body_text()))
    }
}

/// `POST /2/projects/{P}/codes`: multipart `data` (JSON) and `file` (a zip), as the official
/// clients send them.
pub async fn upload_code(
    State(app): State<App>,
    Path(project_id): Path<String>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> ApiResult<Json<Value>> {
    app.authorize(&project_id, &headers, None).await?;
    let mut multipart = multipart.map_err(|e| {
        ApiError::BadRequest(format!("expected a multipart body: {}", e.body_text()))
    })?;
    let limit = app.max_package_bytes;
    let mut data: Option<UploadData> = None;
    let mut package = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        match field.name() {
            Some("data") => {
                let text = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
                data = Some(serde_json::from_slice(&text).map_err(|e| {
                    ApiError::BadRequest(format!("the data part is not valid JSON: {e}"))
                })?);
            }
            Some("file") => {
                let raw = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
                package = match legacy::decode_python_bytes_literal(&raw) {
                    Some(decoded) => decoded,
                    None => raw.to_vec(),
                };
            }
            _ => {}
        }
    }
    let data = data.ok_or_else(|| ApiError::BadRequest("the data part is missing".into()))?;
    if !package.is_empty() && !package.starts_with(b"PK") {
        return Err(ApiError::BadRequest("the file part must be a zip".into()));
    }
    let request = upload_request(project_id.clone(), data, package)?;
    let name = request.name.clone();
    let code = app
        .registry
        .clone()
        .upload_code(request)
        .await
        .map_err(|s| ApiError::from_registry(s, "Project"))?
        .into_inner();
    app.forget_code(&project_id, &name);
    Ok(Json(
        json!({ "id": code.id, "rev": code.rev, "msg": "Upload successful." }),
    ))
}

#[derive(Debug, Default, Deserialize)]
pub struct TaskListQuery {
    page: Option<u32>,
    per_page: Option<u32>,
    code_name: Option<String>,
    queued: Option<String>,
    preparing: Option<String>,
    running: Option<String>,
    complete: Option<String>,
    error: Option<String>,
    cancelled: Option<String>,
    killed: Option<String>,
    timeout: Option<String>,
    from_time: Option<String>,
    to_time: Option<String>,
    label: Option<String>,
}

fn flag(v: &Option<String>) -> bool {
    v.as_deref()
        .is_some_and(|v| matches!(v, "1" | "true" | "yes" | "on"))
}

/// `GET /2/projects/{P}/tasks`: newest first; the status flags are OR'd.
pub async fn list_tasks(
    State(app): State<App>,
    Path(project_id): Path<String>,
    q: Result<Query<TaskListQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let q = query(q)?;
    let (page, per_page) = Paging {
        page: q.page,
        per_page: q.per_page,
    }
    .validate()?;
    app.authorize(&project_id, &headers, None).await?;
    let statuses: Vec<String> = [
        ("queued", &q.queued),
        ("preparing", &q.preparing),
        ("running", &q.running),
        ("complete", &q.complete),
        ("error", &q.error),
        ("cancelled", &q.cancelled),
        ("killed", &q.killed),
        ("timeout", &q.timeout),
    ]
    .into_iter()
    .filter(|(_, v)| flag(v))
    .map(|(s, _)| s.to_string())
    .collect();
    let seconds = |v: Option<String>, field: &str| -> ApiResult<i64> {
        Ok(number(v, field)?.map(|n| n as i64).unwrap_or(0))
    };
    let tasks = app
        .registry
        .clone()
        .list_tasks(pb::ListTasksRequest {
            project_id,
            page,
            per_page,
            code_name: q.code_name.unwrap_or_default(),
            statuses,
            from_time: seconds(q.from_time, "from_time")?,
            to_time: seconds(q.to_time, "to_time")?,
            label: q.label.filter(|l| !l.is_empty()),
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Project"))?
        .into_inner()
        .tasks;
    let tasks: Vec<TaskView> = tasks.into_iter().map(Into::into).collect();
    Ok(Json(json!({ "tasks": tasks })))
}

/// `POST /2/projects/{P}/tasks/{T}/cancel`: no body, no content type needed.
pub async fn cancel_task(
    State(app): State<App>,
    Path((project_id, task_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    app.authorize(&project_id, &headers, None).await?;
    let status = app
        .registry
        .clone()
        .cancel_task(pb::GetTaskRequest {
            project_id,
            task_id,
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Task"))?
        .into_inner()
        .status;
    if status == "cancelled" {
        Ok(Json(json!({ "msg": "Cancelled" })))
    } else {
        Err(ApiError::BadRequest(format!(
            "The task has already finished ({status})"
        )))
    }
}

#[derive(Debug, Deserialize)]
struct ProgressRequest {
    percent: Option<f64>,
    msg: Option<String>,
}

/// `POST /2/projects/{P}/tasks/{T}/progress`: `{"percent": 0..100, "msg": "..."}`.
pub async fn set_progress(
    State(app): State<App>,
    Path((project_id, task_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    app.authorize_for_task(&project_id, &task_id, &headers)
        .await?;
    require_json(&headers)?;
    let body = read_body(&headers, body, app.max_json_bytes).await?;
    let progress: ProgressRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    let percent = match progress.percent {
        None => 0,
        Some(p) => whole(p, "percent", 0.0, 100.0)? as i32,
    };
    app.registry
        .clone()
        .set_progress(pb::SetProgressRequest {
            project_id,
            task_id,
            percent,
            msg: progress.msg.unwrap_or_default(),
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Task"))?;
    Ok(Json(json!({ "msg": "Progress set" })))
}

#[derive(Debug, Default, Deserialize)]
struct RetryRequest {
    delay: Option<f64>,
}

/// `POST /2/projects/{P}/tasks/{T}/retry`: queues the task again as a new task (new id,
/// `retry_count` + 1, `retry_of` the original), running the revision the original ran. The new
/// task's trace starts at the `retry_task` span.
#[tracing::instrument(name = "retry_task", skip_all, fields(
    otel.kind = "server",
    %project_id,
    retry_of = %task_id,
    task_id = tracing::field::Empty,
    trace_id = tracing::field::Empty,
    http.response.status_code = tracing::field::Empty,
    otel.status_code = tracing::field::Empty,
))]
pub async fn retry_task(
    State(app): State<App>,
    Path((project_id, task_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    workhook_core::telemetry::record_trace_id(&tracing::Span::current());
    let answer = queue_retry(app, project_id, task_id, headers, body).await;
    record_answer(&answer);
    answer
}

async fn queue_retry(
    app: App,
    project_id: String,
    task_id: String,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    app.authorize(&project_id, &headers, None).await?;
    require_json(&headers)?;
    let body = read_body(&headers, body, app.max_json_bytes).await?;
    let retry: RetryRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RetryRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?
    };
    let original = app
        .registry
        .clone()
        .get_task(pb::GetTaskRequest {
            project_id: project_id.clone(),
            task_id,
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Task"))?
        .into_inner();
    if matches!(original.status.as_str(), "queued" | "preparing" | "running") {
        return Err(ApiError::BadRequest(format!(
            "The task is still {}; retry it once it has finished",
            original.status
        )));
    }
    let delay = match retry.delay {
        None => 0,
        Some(d) => whole(d, "delay", 0.0, f64::from(MAX_DELAY))?,
    };
    let envelope = Envelope {
        task_id: fresh_task_id(delay),
        project_id,
        code_id: original.code_id,
        code_name: original.code_name,
        code_rev: original.code_rev,
        priority: original.priority.clamp(0, 2) as u8,
        timeout: original.timeout.max(1) as u32,
        delay,
        label: original.label,
        cluster: original.cluster,
        received_at: chrono::Utc::now().timestamp_millis(),
        source: Source::Retry,
        retry_of: Some(original.id),
        retry_count: original.retry_count.max(0) as u32 + 1,
        schedule_id: original.schedule_id,
        verified_by: None,
        request: None,
        payload_ref: original.payload_ref,
    };
    let task_id = app
        .publish(&envelope, original.payload, TaskIdKind::Fresh)
        .await?;
    tracing::Span::current().record("task_id", task_id.as_str());
    Ok(Json(
        json!({ "msg": "Queued up", "tasks": [{ "id": task_id }] }),
    ))
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "msg": "alive" }))
}

/// `GET /readyz`: NATS is connected and the registry answers; not ready while draining.
pub async fn readyz(State(app): State<App>) -> ApiResult<Json<Value>> {
    if app.draining.load(Ordering::Relaxed) {
        return Err(ApiError::Unavailable("draining".into()));
    }
    if app.nats.connection_state() != async_nats::connection::State::Connected {
        return Err(ApiError::Unavailable("NATS is not connected".into()));
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    let check = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await;
    match check {
        Ok(Ok(r))
            if r.get_ref().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
        {
            Ok(Json(json!({ "msg": "ready" })))
        }
        _ => Err(ApiError::Unavailable(
            "the registry is not reachable".into(),
        )),
    }
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("Route")
}

pub async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({ "msg": "Method not allowed" })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_query_is_decoded_and_a_repeated_key_refused() {
        let q = WebhookQuery::parse(Some(
            "code_name=my+code&oauth=t%2Fk&delay=&label=a%20b&other=1&priority=2",
        ))
        .unwrap();
        assert_eq!(
            q,
            WebhookQuery {
                code_name: Some("my code".into()),
                oauth: Some("t/k".into()),
                priority: Some("2".into()),
                delay: Some(String::new()),
                label: Some("a b".into()),
                ..Default::default()
            }
        );
        assert_eq!(WebhookQuery::parse(None).unwrap(), WebhookQuery::default());
        let twice = WebhookQuery::parse(Some("oauth=a&code_name=w&oauth=b")).unwrap_err();
        assert_eq!(twice.status(), StatusCode::BAD_REQUEST);
        assert!(twice.to_string().contains("oauth"), "{twice}");
    }

    #[tokio::test]
    async fn a_queued_webhook_is_answered_with_its_id_as_json() {
        let response = Queued("6b0e12840596c3c462a96548".into()).into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            answer,
            json!({ "id": "6b0e12840596c3c462a96548", "msg": "Queued up." })
        );
    }

    #[test]
    fn the_worker_sees_the_request_as_json_without_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert("x-github-event", "push".parse().unwrap());
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        headers.insert(header::AUTHORIZATION, "OAuth secret".parse().unwrap());
        headers.insert(header::COOKIE, "s=1".parse().unwrap());
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", "b \"q\" \\ \t".parse().unwrap());
        headers.insert(
            "x-bytes",
            header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        );
        let uri: Uri = "/2/projects/p/tasks/webhook?code_name=x&oauth=T&a=%22b%22"
            .parse()
            .unwrap();
        let text = worker_request(&Method::POST, &uri, &headers);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({
                "method": "POST",
                "query": "code_name=x&a=%22b%22",
                "content_type": "application/json",
                "headers": {
                    "x-github-event": "push",
                    "content-type": "application/json",
                    "x-multi": "a, b \"q\" \\ \t",
                    "x-bytes": "caf\u{fffd}",
                }
            })
        );
        let none = worker_request(&Method::GET, &"/x".parse().unwrap(), &HeaderMap::new());
        assert_eq!(
            serde_json::from_str::<Value>(&none).unwrap(),
            json!({"method": "GET", "query": "", "content_type": null, "headers": {}})
        );
    }

    #[test]
    fn options_take_defaults_and_accept_floats() {
        let o = RawOptions::default().validate(1).unwrap();
        assert_eq!(
            o,
            TaskOptions {
                priority: 1,
                timeout: 3600,
                delay: 0,
                label: None,
                cluster: "default".into()
            }
        );
        let o = RawOptions {
            priority: Some(2.0),
            timeout: Some(30.0),
            delay: Some(5.0),
            label: Some("x".into()),
            cluster: Some(String::new()),
        }
        .validate(0)
        .unwrap();
        assert_eq!((o.priority, o.timeout, o.delay), (2, 30, 5));
        assert_eq!(o.cluster, "default");
    }

    #[test]
    fn options_outside_the_limits_are_refused() {
        for raw in [
            RawOptions {
                priority: Some(3.0),
                ..Default::default()
            },
            RawOptions {
                priority: Some(1.5),
                ..Default::default()
            },
            RawOptions {
                timeout: Some(3601.0),
                ..Default::default()
            },
            RawOptions {
                timeout: Some(-1.0),
                ..Default::default()
            },
            RawOptions {
                delay: Some(604_801.0),
                ..Default::default()
            },
            RawOptions {
                delay: Some(f64::NAN),
                ..Default::default()
            },
        ] {
            assert!(matches!(raw.validate(0), Err(ApiError::BadRequest(_))));
        }
    }

    #[test]
    fn uploads_need_a_name_and_a_command() {
        let data = |json: Value| serde_json::from_value::<UploadData>(json).unwrap();
        let p = "p".to_string();
        assert!(upload_request(p.clone(), data(json!({"command": "x"})), vec![]).is_err());
        assert!(upload_request(p.clone(), data(json!({"name": "w"})), vec![]).is_err());
        let r = upload_request(
            p.clone(),
            data(
                json!({"name": "w", "runtime": "python", "file_name": "w.py",
                        "env_vars": {"A": "1", "B": 2}, "config": {"k": true},
                        "max_concurrency": -1, "retries": 3}),
            ),
            vec![],
        )
        .unwrap();
        assert_eq!(r.command, "python3 w.py");
        assert_eq!(r.env_vars["B"], "2");
        assert_eq!(r.config.as_deref(), Some(r#"{"k":true}"#));
        assert_eq!(r.max_concurrency, None);
        assert_eq!(r.retries, 3);
        assert!(upload_request(
            p,
            data(json!({"name": "w", "command": "x", "retries": 11})),
            vec![]
        )
        .is_err());
    }
}
