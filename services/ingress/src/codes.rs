//! The code routes beyond upload and list: info, delete, revisions, download, stats, pausing
//! and cancel_all.

use axum::{
    body::Body,
    extract::{rejection::QueryRejection, Path, Query, State},
    http::{header, HeaderMap},
    response::{IntoResponse, Response},
    Json,
};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use workhook_proto as pb;

use crate::api::{query, Paging};
use crate::error::{ApiError, ApiResult};
use crate::state::App;
use crate::views::CodeView;

type CodePath = Path<(String, String)>;

fn code_request(project_id: String, code_id: String) -> pb::CodeRequest {
    pb::CodeRequest {
        project_id,
        code_id,
    }
}

/// `GET /2/projects/{P}/codes/{C}`.
pub async fn info(
    State(app): State<App>,
    Path((project_id, code_id)): CodePath,
    headers: HeaderMap,
) -> ApiResult<Json<CodeView>> {
    app.authorize(&project_id, &headers, None).await?;
    let code = app
        .registry
        .clone()
        .get_code(code_request(project_id, code_id))
        .await
        .map_err(|s| ApiError::from_registry(s, "Code"))?
        .into_inner();
    Ok(Json(code.into()))
}

/// `DELETE /2/projects/{P}/codes/{C}`.
pub async fn delete(
    State(app): State<App>,
    Path((project_id, code_id)): CodePath,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    app.authorize(&project_id, &headers, None).await?;
    let code = app
        .registry
        .clone()
        .get_code(code_request(project_id.clone(), code_id.clone()))
        .await
        .map_err(|s| ApiError::from_registry(s, "Code"))?
        .into_inner();
    app.registry
        .clone()
        .delete_code(code_request(project_id.clone(), code_id))
        .await
        .map_err(|s| ApiError::from_registry(s, "Code"))?;
    app.forget_code(&project_id, &code.name);
    Ok(Json(json!({ "msg": "Deleted" })))
}

/// `GET /2/projects/{P}/codes/{C}/revisions`: newest first.
pub async fn revisions(
    State(app): State<App>,
    Path((project_id, code_id)): CodePath,
    q: Result<Query<Paging>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let (page, per_page) = query(q)?.validate()?;
    app.authorize(&project_id, &headers, None).await?;
    let revisions = app
        .registry
        .clone()
        .list_revisions(pb::ListRevisionsRequest {
            project_id,
            code_id,
            page,
            per_page,
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Code"))?
        .into_inner()
        .codes;
    let revisions: Vec<Value> = revisions
        .into_iter()
        .map(|c| {
            let history_id = c.latest_history_id.clone();
            let mut v = serde_json::to_value(CodeView::from(c)).unwrap_or(Value::Null);
            // A revision's own id is its history id; code_id names the code.
            v["code_id"] = v["id"].clone();
            v["id"] = Value::String(history_id);
            v
        })
        .collect();
    Ok(Json(json!({ "revisions": revisions })))
}

#[derive(Debug, Default, Deserialize)]
pub struct DownloadQuery {
    revision: Option<i32>,
}

/// `GET /2/projects/{P}/codes/{C}/download?revision=N`: the zip as uploaded.
pub async fn download(
    State(app): State<App>,
    Path((project_id, code_id)): CodePath,
    q: Result<Query<DownloadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let q = query(q)?;
    app.authorize(&project_id, &headers, None).await?;
    let code = app
        .registry
        .clone()
        .get_revision(pb::GetRevisionRequest {
            project_id,
            code_id,
            rev: q.revision.unwrap_or(0),
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Code revision"))?
        .into_inner();
    if code.checksum.is_empty() {
        return Err(ApiError::NotFound("Package"));
    }
    let chunks = app
        .registry
        .clone()
        .get_package(pb::GetPackageRequest {
            checksum: code.checksum,
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Package"))?
        .into_inner()
        .map(|c| c.map(|c| c.data));
    let file_name: String = code
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename={file_name}_{}.zip", code.rev),
            ),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// `GET /2/projects/{P}/codes/{C}/stats`: the code's tasks by status.
pub async fn stats(
    State(app): State<App>,
    Path((project_id, code_id)): CodePath,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    app.authorize(&project_id, &headers, None).await?;
    let counts = app
        .registry
        .clone()
        .code_stats(code_request(project_id, code_id))
        .await
        .map_err(|s| ApiError::from_registry(s, "Code"))?
        .into_inner()
        .counts;
    Ok(Json(json!(counts)))
}

async fn set_paused(
    app: App,
    project_id: String,
    code_id: String,
    headers: HeaderMap,
    paused: bool,
) -> ApiResult<Json<Value>> {
    app.authorize(&project_id, &headers, None).await?;
    app.registry
        .clone()
        .set_code_paused(pb::SetCodePausedRequest {
            project_id,
            code_id,
            paused,
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Code"))?;
    Ok(Json(
        json!({ "msg": if paused { "Paused" } else { "Resumed" } }),
    ))
}

/// `POST /2/projects/{P}/codes/{C}/pause_task_queue`: its tasks stay queued until resumed.
pub async fn pause(
    State(app): State<App>,
    Path((project_id, code_id)): CodePath,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    set_paused(app, project_id, code_id, headers, true).await
}

/// `POST /2/projects/{P}/codes/{C}/resume_task_queue`.
pub async fn resume(
    State(app): State<App>,
    Path((project_id, code_id)): CodePath,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    set_paused(app, project_id, code_id, headers, false).await
}

/// `POST /2/projects/{P}/codes/{C}/cancel_all`: cancels the code's queued tasks.
pub async fn cancel_all(
    State(app): State<App>,
    Path((project_id, code_id)): CodePath,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    app.authorize(&project_id, &headers, None).await?;
    let cancelled = app
        .registry
        .clone()
        .cancel_all(code_request(project_id, code_id))
        .await
        .map_err(|s| ApiError::from_registry(s, "Code"))?
        .into_inner()
        .cancelled;
    Ok(Json(json!({ "msg": "Cancelled", "cancelled": cancelled })))
}

/// `POST /2/projects/{P}/codes/{C}/webhook_tokens`: a token good only for this code's webhook,
/// shown once, with the webhook URL that carries it.
pub async fn create_webhook_token(
    State(app): State<App>,
    Path((project_id, code_id)): CodePath,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    app.authorize(&project_id, &headers, None).await?;
    let code = app
        .registry
        .clone()
        .get_code(code_request(project_id.clone(), code_id.clone()))
        .await
        .map_err(|s| ApiError::from_registry(s, "Code"))?
        .into_inner();
    let token = app
        .registry
        .clone()
        .create_webhook_token(code_request(project_id.clone(), code_id))
        .await
        .map_err(|s| ApiError::from_registry(s, "Code"))?
        .into_inner();
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let path = format!(
        "/2/projects/{project_id}/tasks/webhook?code_name={}&oauth={}",
        utf8_percent_encode(&code.name, NON_ALPHANUMERIC),
        token.token
    );
    Ok(Json(json!({
        "id": token.id,
        "token": token.token,
        "webhook_path": path,
        "msg": "Created",
    })))
}

/// `GET /2/projects/{P}/codes/{C}/webhook_tokens`: the code's webhook tokens (ids, not secrets).
pub async fn list_webhook_tokens(
    State(app): State<App>,
    Path((project_id, code_id)): CodePath,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    app.authorize(&project_id, &headers, None).await?;
    let tokens = app
        .registry
        .clone()
        .list_webhook_tokens(code_request(project_id, code_id))
        .await
        .map_err(|s| ApiError::from_registry(s, "Code"))?
        .into_inner()
        .tokens;
    let tokens: Vec<Value> = tokens
        .into_iter()
        .map(|t| json!({"id": t.id, "created_at": crate::views::time(t.created_at)}))
        .collect();
    Ok(Json(json!({ "webhook_tokens": tokens })))
}

/// `DELETE /2/projects/{P}/codes/{C}/webhook_tokens/{T}`: revokes it (ingresses that checked
/// it recently accept it for at most their cache TTL more).
pub async fn revoke_webhook_token(
    State(app): State<App>,
    Path((project_id, code_id, token_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    app.authorize(&project_id, &headers, None).await?;
    app.registry
        .clone()
        .revoke_webhook_token(pb::RevokeWebhookTokenRequest {
            project_id,
            code_id,
            token_id,
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Webhook token"))?;
    Ok(Json(json!({ "msg": "Revoked" })))
}
