//! The JSON shapes of the IronWorker v2 API.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use workhook_proto as pb;

/// IronWorker's spelling of an unset time.
pub const UNSET_TIME: &str = "0001-01-01T00:00:00Z";

/// Unix milliseconds as RFC 3339; 0 is the unset time.
pub fn time(ms: i64) -> String {
    if ms == 0 {
        return UNSET_TIME.to_string();
    }
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| UNSET_TIME.to_string())
}

#[derive(Serialize)]
pub struct TaskView {
    pub id: String,
    pub project_id: String,
    pub code_id: String,
    pub code_name: String,
    /// A string, as the clients expect.
    pub code_rev: String,
    pub code_history_id: String,
    pub status: String,
    pub msg: String,
    pub error_class: String,
    pub retry_count: i32,
    pub priority: i32,
    pub timeout: i32,
    pub delay: i32,
    pub payload: String,
    pub cluster: String,
    pub label: Option<String>,
    pub log_size: i64,
    pub percent: i32,
    /// Milliseconds between start and end, when both are set.
    pub duration: Option<i64>,
    pub created_at: String,
    pub updated_at: String,
    pub start_time: String,
    pub end_time: String,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    /// The signature scheme that verified the webhook, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_by: Option<String>,
}

impl From<pb::Task> for TaskView {
    fn from(t: pb::Task) -> Self {
        let duration =
            (t.start_time > 0 && t.end_time >= t.start_time).then_some(t.end_time - t.start_time);
        TaskView {
            id: t.id,
            project_id: t.project_id,
            code_id: t.code_id,
            code_name: t.code_name,
            code_rev: t.code_rev.to_string(),
            code_history_id: t.code_history_id,
            status: t.status,
            msg: t.msg,
            error_class: t.error_class,
            retry_count: t.retry_count,
            priority: t.priority,
            timeout: t.timeout,
            delay: t.delay,
            payload: String::from_utf8_lossy(&t.payload).into_owned(),
            cluster: t.cluster,
            label: t.label,
            log_size: t.log_size,
            percent: t.percent,
            duration,
            created_at: time(t.created_at),
            updated_at: time(t.updated_at),
            start_time: time(t.start_time),
            end_time: time(t.end_time),
            source: t.source,
            retry_of: t.retry_of,
            schedule_id: t.schedule_id,
            verified_by: t.verified_by,
        }
    }
}

#[derive(Serialize)]
pub struct CodeView {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub rev: i32,
    pub created_at: String,
    pub latest_change: String,
    pub latest_history_id: String,
    pub latest_checksum: String,
    pub command: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    pub env_vars: std::collections::HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<i32>,
    pub retries: i32,
    pub retries_delay: i32,
    pub default_priority: i32,
    pub runtime: String,
    pub file_name: String,
    pub package_size: i64,
}

impl From<pb::Code> for CodeView {
    fn from(c: pb::Code) -> Self {
        CodeView {
            id: c.id,
            project_id: c.project_id,
            name: c.name,
            rev: c.rev,
            created_at: time(c.created_at),
            latest_change: time(c.updated_at),
            latest_history_id: c.latest_history_id,
            latest_checksum: c.checksum,
            command: c.command,
            config: c.config,
            env_vars: c.env_vars,
            max_concurrency: c.max_concurrency,
            retries: c.retries,
            retries_delay: c.retries_delay,
            default_priority: c.default_priority,
            runtime: c.runtime,
            file_name: c.file_name,
            package_size: c.package_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_and_unset_is_year_one() {
        assert_eq!(time(0), UNSET_TIME);
        assert_eq!(time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn task_view_has_a_string_revision_and_a_duration() {
        let v = TaskView::from(pb::Task {
            code_rev: 7,
            start_time: 1_000,
            end_time: 3_500,
            ..Default::default()
        });
        assert_eq!(v.code_rev, "7");
        assert_eq!(v.duration, Some(2_500));
        let v = TaskView::from(pb::Task::default());
        assert_eq!(v.duration, None);
        assert_eq!(v.start_time, UNSET_TIME);
    }
}

#[derive(Serialize)]
pub struct ScheduleView {
    pub id: String,
    pub project_id: String,
    pub code_name: String,
    pub name: String,
    pub payload: String,
    pub status: String,
    pub msg: String,
    pub run_count: i32,
    pub error_count: i32,
    pub last_run_time: String,
    pub next_start: String,
    pub start_at: String,
    pub end_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_every: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_times: Option<i32>,
    pub priority: i32,
    pub timeout: i32,
    pub delay: i32,
    pub cluster: String,
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<pb::Schedule> for ScheduleView {
    fn from(s: pb::Schedule) -> Self {
        let spec = s.spec.unwrap_or_default();
        ScheduleView {
            id: s.id,
            project_id: s.project_id,
            code_name: spec.code_name,
            name: spec.name,
            payload: String::from_utf8_lossy(&spec.payload).into_owned(),
            status: s.status,
            msg: s.msg,
            run_count: s.run_count,
            error_count: s.error_count,
            last_run_time: time(s.last_run_time),
            next_start: time(s.next_start),
            start_at: time(spec.start_at),
            end_at: time(spec.end_at),
            run_every: (spec.run_every > 0).then_some(spec.run_every),
            run_times: (spec.run_times > 0).then_some(spec.run_times),
            priority: spec.priority,
            timeout: spec.timeout,
            delay: spec.delay,
            cluster: spec.cluster,
            label: spec.label,
            cron: (!spec.cron.is_empty()).then_some(spec.cron),
            created_at: time(s.created_at),
            updated_at: time(s.updated_at),
        }
    }
}
