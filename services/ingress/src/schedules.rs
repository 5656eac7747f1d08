//! The schedule routes: create (batch), list, info, update, cancel.

use axum::{
    body::Body,
    extract::{rejection::QueryRejection, Path, Query, State},
    http::HeaderMap,
    Json,
};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use workhook_proto as pb;

use crate::api::{query, read_body, require_json, Paging, RawOptions};
use crate::error::{ApiError, ApiResult};
use crate::state::App;
use crate::views::ScheduleView;

/// The shortest period IronWorker allows.
const MIN_RUN_EVERY: f64 = 60.0;

#[derive(Debug, Deserialize)]
pub struct ScheduleInput {
    code_name: Option<String>,
    payload: Option<Value>,
    name: Option<String>,
    start_at: Option<Value>,
    end_at: Option<Value>,
    run_every: Option<f64>,
    run_times: Option<f64>,
    /// A cron expression with seconds (workhook's addition).
    cron: Option<String>,
    #[serde(flatten)]
    options: RawOptions,
}

/// A time as RFC 3339 (any offset, any precision) or as Unix seconds, in Unix milliseconds.
fn time(v: Option<Value>, field: &str) -> ApiResult<i64> {
    let bad = || ApiError::BadRequest(format!("{field} must be an RFC 3339 time"));
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) if s.is_empty() => Ok(0),
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| t.timestamp_millis())
            .map_err(|_| bad()),
        Some(Value::Number(n)) => n.as_f64().map(|s| (s * 1000.0) as i64).ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

impl ScheduleInput {
    fn validate(self) -> ApiResult<pb::ScheduleSpec> {
        let code_name = self
            .code_name
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ApiError::BadRequest("every schedule needs a code_name".into()))?;
        let run_every = match self.run_every {
            None => 0,
            Some(n) if n.is_finite() && (MIN_RUN_EVERY..=f64::from(i32::MAX)).contains(&n) => {
                n as i32
            }
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "run_every must be at least 60 seconds".into(),
                ))
            }
        };
        let run_times = match self.run_times {
            None => 0,
            Some(n) if n.is_finite() && n >= 0.0 && n <= f64::from(i32::MAX) => n as i32,
            Some(_) => return Err(ApiError::BadRequest("run_times must be positive".into())),
        };
        let start_at = time(self.start_at, "start_at")?;
        let end_at = time(self.end_at, "end_at")?;
        if end_at > 0 && start_at > 0 && end_at < start_at {
            return Err(ApiError::BadRequest("end_at is before start_at".into()));
        }
        let cron = self.cron.unwrap_or_default();
        if !cron.is_empty() {
            if run_every > 0 {
                return Err(ApiError::BadRequest(
                    "give run_every or cron, not both".into(),
                ));
            }
            <cron::Schedule as std::str::FromStr>::from_str(&cron).map_err(|e| {
                ApiError::BadRequest(format!(
                    "cron must be \"sec min hour day month weekday [year]\": {e}"
                ))
            })?;
        }
        let options = self.options.validate(0)?;
        let payload = match self.payload {
            None | Some(Value::Null) => Bytes::new(),
            Some(Value::String(s)) => Bytes::from(s),
            Some(other) => Bytes::from(other.to_string()),
        };
        Ok(pb::ScheduleSpec {
            code_name,
            payload,
            name: self.name.unwrap_or_default(),
            start_at,
            end_at,
            run_every,
            run_times,
            priority: i32::from(options.priority),
            timeout: options.timeout as i32,
            delay: options.delay as i32,
            cluster: options.cluster,
            label: options.label,
            cron,
        })
    }
}

#[derive(Debug, Deserialize)]
struct CreateRequest {
    schedules: Option<Vec<ScheduleInput>>,
}

async fn json_body<T: serde::de::DeserializeOwned>(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<T> {
    require_json(headers)?;
    let body = read_body(headers, body, app.max_json_bytes).await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))
}

/// `POST /2/projects/{P}/schedules`: `{"schedules": [...]}`.
pub async fn create(
    State(app): State<App>,
    Path(project_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    app.authorize(&project_id, &headers, None).await?;
    let request: CreateRequest = json_body(&app, &headers, body).await?;
    let schedules = request
        .schedules
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::BadRequest("schedules must hold at least one schedule".into()))?
        .into_iter()
        .map(ScheduleInput::validate)
        .collect::<ApiResult<Vec<_>>>()?;
    let ids = app
        .registry
        .clone()
        .create_schedules(pb::CreateSchedulesRequest {
            project_id,
            schedules,
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Code"))?
        .into_inner()
        .ids;
    let ids: Vec<Value> = ids.into_iter().map(|id| json!({ "id": id })).collect();
    Ok(Json(json!({ "msg": "Scheduled", "schedules": ids })))
}

/// `GET /2/projects/{P}/schedules`.
pub async fn list(
    State(app): State<App>,
    Path(project_id): Path<String>,
    q: Result<Query<Paging>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let (page, per_page) = query(q)?.validate()?;
    app.authorize(&project_id, &headers, None).await?;
    let schedules = app
        .registry
        .clone()
        .list_schedules(pb::ListSchedulesRequest {
            project_id,
            page,
            per_page,
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Project"))?
        .into_inner()
        .schedules;
    let schedules: Vec<ScheduleView> = schedules.into_iter().map(Into::into).collect();
    Ok(Json(json!({ "schedules": schedules })))
}

/// `GET /2/projects/{P}/schedules/{S}`.
pub async fn info(
    State(app): State<App>,
    Path((project_id, schedule_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<ScheduleView>> {
    app.authorize(&project_id, &headers, None).await?;
    let schedule = app
        .registry
        .clone()
        .get_schedule(pb::ScheduleRequest {
            project_id,
            schedule_id,
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Schedule"))?
        .into_inner();
    Ok(Json(schedule.into()))
}

/// `PUT /2/projects/{P}/schedules/{S}`: replaces the schedule's fields.
pub async fn update(
    State(app): State<App>,
    Path((project_id, schedule_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    app.authorize(&project_id, &headers, None).await?;
    let input: ScheduleInput = json_body(&app, &headers, body).await?;
    let spec = input.validate()?;
    app.registry
        .clone()
        .update_schedule(pb::UpdateScheduleRequest {
            project_id,
            schedule_id,
            spec: Some(spec),
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Schedule"))?;
    Ok(Json(json!({ "msg": "Updated" })))
}

/// `POST /2/projects/{P}/schedules/{S}/cancel`: no body needed.
pub async fn cancel(
    State(app): State<App>,
    Path((project_id, schedule_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    app.authorize(&project_id, &headers, None).await?;
    app.registry
        .clone()
        .cancel_schedule(pb::ScheduleRequest {
            project_id,
            schedule_id,
        })
        .await
        .map_err(|s| ApiError::from_registry(s, "Schedule"))?;
    Ok(Json(json!({ "msg": "Cancelled" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(v: Value) -> ScheduleInput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn schedules_need_a_code_and_a_period_of_a_minute() {
        assert!(input(json!({"run_every": 60})).validate().is_err());
        assert!(input(json!({"code_name": "w", "run_every": 59}))
            .validate()
            .is_err());
        let s = input(json!({"code_name": "w", "run_every": 60.0, "run_times": 3,
                             "start_at": "2030-01-01T00:00:00.123456+02:00", "label": null}))
        .validate()
        .unwrap();
        assert_eq!(s.run_every, 60);
        assert_eq!(s.run_times, 3);
        assert_eq!(s.start_at, 1_893_448_800_123);
        assert_eq!(s.timeout, 3600);
    }

    #[test]
    fn times_are_rfc3339_or_seconds() {
        assert_eq!(time(None, "t").unwrap(), 0);
        assert_eq!(time(Some(json!(1.5)), "t").unwrap(), 1_500);
        assert!(time(Some(json!("yesterday")), "t").is_err());
        assert!(
            input(json!({"code_name": "w", "start_at": "2030-01-02T00:00:00Z",
                             "end_at": "2030-01-01T00:00:00Z"}))
            .validate()
            .is_err()
        );
    }
}
