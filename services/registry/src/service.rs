//! The gRPC surface of the registry.

use std::pin::Pin;
use std::time::Duration;

use std::sync::Arc;

use futures_util::Stream;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};
use workhook_core::ids;
use workhook_proto::{self as pb, registry_server::Registry};

use crate::catchup::CatchUp;
use crate::coalesce::{self, Coalescer};
use crate::error::RegistryError;
use crate::store::{self, Start};

/// The longest a call over many tasks waits for the catch-up to record the queued ones; a longer
/// catch-up goes on without it.
const LIST_CATCH_UP_WAIT: Duration = Duration::from_secs(1);
/// Package and log bytes are streamed in pieces of this size.
const CHUNK: usize = 256 * 1024;

pub struct RegistryService {
    pub pool: PgPool,
    pub admin_token: Option<String>,
    pub log_max_bytes: i64,
    pub max_package_bytes: usize,
    /// Records the queued tasks that wait in the stream, when a call reads them.
    pub catchup: Arc<CatchUp>,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub layout: workhook_core::stream::Layout,
    /// StartTask and FinishTask("complete") calls, each kind batched into one statement.
    pub starts: Coalescer<coalesce::StartCall, coalesce::StartAnswer>,
    pub completes: Coalescer<coalesce::CompleteCall, coalesce::CompleteAnswer>,
}

/// The answer when a batched call got no answer: the registry is stopping, or the batch it was
/// in failed. Either way nothing was decided for it that a retry could not find out.
fn unanswered() -> Status {
    Status::unavailable("the registry could not answer this call; try again")
}

type ChunkStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn chunked<T: Send + 'static>(parts: Vec<Vec<u8>>, wrap: fn(bytes::Bytes) -> T) -> ChunkStream<T> {
    let pieces: Vec<Result<T, Status>> = parts
        .into_iter()
        .flat_map(|part| {
            let part = bytes::Bytes::from(part);
            let n = part.len().div_ceil(CHUNK);
            (0..n)
                .map(move |i| part.slice(i * CHUNK..((i + 1) * CHUNK).min(part.len())))
                .collect::<Vec<_>>()
        })
        .map(|b| Ok(wrap(b)))
        .collect();
    Box::pin(futures_util::stream::iter(pieces))
}

/// IronWorker's paging: 30 a page by default, at most 100.
fn per_page(asked: u32) -> u32 {
    if asked == 0 {
        30
    } else {
        asked.min(100)
    }
}

/// The task a runner's call is about, on the call's span (so its log lines carry it).
fn record_task_id(task_id: &str) {
    tracing::Span::current().record("task_id", task_id);
}

fn need_id(what: &'static str, id: &str) -> Result<(), Status> {
    if ids::is_id(id) {
        Ok(())
    } else {
        Err(RegistryError::NotFound(what).into())
    }
}

impl RegistryService {
    fn check_admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(expected) = self.admin_token.as_deref().filter(|t| !t.is_empty()) else {
            return Err(RegistryError::PermissionDenied(
                "admin calls are disabled: set WORKHOOK_ADMIN_TOKEN on the registry",
            )
            .into());
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(RegistryError::Unauthenticated.into())
        }
    }

    /// Read your writes for calls over many tasks (lists, stats, cancel_all): records, waiting at
    /// most `LIST_CATCH_UP_WAIT`, every task queued before the call that is not recorded yet. A
    /// long catch-up (a large backlog nobody read) only delays the answer, never fails it, and
    /// goes on after it.
    async fn catch_up(&self) {
        let catchup = self.catchup.clone();
        let run = tokio::spawn(async move { catchup.run().await });
        match tokio::time::timeout(LIST_CATCH_UP_WAIT, run).await {
            Ok(Ok(Ok(_))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "catching up with the queue failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "catching up with the queue failed"),
            Err(_) => tracing::info!("the catch-up with the queue goes on after this call"),
        }
    }

    /// Publishes a task the registry queues itself (a retry), waiting for the PubAck.
    async fn publish(
        &self,
        envelope: &workhook_core::Envelope,
        payload: Vec<u8>,
    ) -> Result<(), Status> {
        let subject = self.layout.subject_for(envelope);
        // The retry continues the trace of the attempt that failed (this call's span). Its id is
        // derived from the failed task's, so publishing it twice is one task.
        let message = envelope.queue_message(
            payload.into(),
            Some(&envelope.task_id),
            &tracing::Span::current(),
        );
        let acked = async {
            self.js.send_publish(subject, message).await?.await?;
            Ok::<_, async_nats::Error>(())
        }
        .await;
        acked.map_err(|e| {
            tracing::warn!(task_id = %envelope.task_id, error = %e, "publishing a retry failed");
            Status::unavailable("the queue is unavailable")
        })
    }

    /// Tells the runners that a task was cancelled, so the one running it stops it now rather
    /// than at its next heartbeat (which stops it anyway if this message is lost).
    async fn announce_cancel(&self, task_id: &str) {
        if let Err(e) = self
            .nats
            .publish(self.layout.cancel_subject(task_id), bytes::Bytes::new())
            .await
        {
            tracing::warn!(%task_id, error = %e, "announcing a cancel failed; the heartbeat will stop it");
        }
    }

    /// After a lookup in Postgres missed: records the task from the stream if it waits there
    /// unrecorded. The caller looks again either way: a runner may have started the task (and
    /// recorded it) since the first lookup, and acked it out of the stream.
    async fn record_if_queued(&self, project_id: &str, task_id: &str) -> Result<(), Status> {
        self.catchup
            .find_queued(project_id, task_id)
            .await
            .map(|_| ())
            .map_err(|e| {
                tracing::warn!(error = %e, %task_id, "looking for a queued task failed");
                Status::unavailable("the queue cannot be read now; try again")
            })
    }
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn create_project(
        &self,
        req: Request<pb::CreateProjectRequest>,
    ) -> Result<Response<pb::CreateProjectResponse>, Status> {
        self.check_admin(&req)?;
        let name = req.into_inner().name;
        if name.trim().is_empty() {
            return Err(RegistryError::InvalidArgument("a project needs a name".into()).into());
        }
        Ok(Response::new(
            store::create_project(&self.pool, &name).await?,
        ))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let req = req.into_inner();
        if !ids::is_id(&req.project_id) {
            return Err(RegistryError::Unauthenticated.into());
        }
        if store::authenticate(&self.pool, &req.project_id, &req.token).await? {
            return Ok(Response::new(pb::AuthenticateResponse {}));
        }
        if let Some(code_name) = req.code_name.as_deref() {
            if store::authenticate_webhook(&self.pool, &req.project_id, code_name, &req.token)
                .await?
            {
                return Ok(Response::new(pb::AuthenticateResponse {}));
            }
        }
        if let Some(task_id) = req.task_id.as_deref().filter(|t| ids::is_id(t)) {
            if store::authenticate_task(&self.pool, &req.project_id, task_id, &req.token).await? {
                return Ok(Response::new(pb::AuthenticateResponse {}));
            }
        }
        Err(RegistryError::Unauthenticated.into())
    }

    async fn upload_code(
        &self,
        req: Request<pb::UploadCodeRequest>,
    ) -> Result<Response<pb::Code>, Status> {
        let req = req.into_inner();
        need_id("project", &req.project_id)?;
        if req.name.trim().is_empty() {
            return Err(RegistryError::InvalidArgument("a code needs a name".into()).into());
        }
        if req.command.trim().is_empty() {
            return Err(RegistryError::InvalidArgument("a code needs a command".into()).into());
        }
        if req.package.len() > self.max_package_bytes {
            return Err(RegistryError::InvalidArgument(format!(
                "the package is larger than {} bytes",
                self.max_package_bytes
            ))
            .into());
        }
        Ok(Response::new(store::upload_code(&self.pool, req).await?))
    }

    async fn list_codes(
        &self,
        req: Request<pb::ListCodesRequest>,
    ) -> Result<Response<pb::ListCodesResponse>, Status> {
        let req = req.into_inner();
        let per_page = if req.per_page == 0 {
            30
        } else {
            req.per_page.min(100)
        };
        let codes = store::list_codes(&self.pool, &req.project_id, req.page, per_page).await?;
        Ok(Response::new(pb::ListCodesResponse { codes }))
    }

    async fn get_code_by_name(
        &self,
        req: Request<pb::GetCodeByNameRequest>,
    ) -> Result<Response<pb::Code>, Status> {
        let req = req.into_inner();
        Ok(Response::new(
            store::code_by_name(&self.pool, &req.project_id, &req.name).await?,
        ))
    }

    type GetPackageStream = ChunkStream<pb::PackageChunk>;

    async fn get_package(
        &self,
        req: Request<pb::GetPackageRequest>,
    ) -> Result<Response<Self::GetPackageStream>, Status> {
        let data = store::package(&self.pool, &req.into_inner().checksum).await?;
        Ok(Response::new(chunked(vec![data], |data| {
            pb::PackageChunk { data }
        })))
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let req = req.into_inner();
        need_id("task", &req.task_id)?;
        if let Some(task) = store::task(&self.pool, &req.project_id, &req.task_id).await? {
            return Ok(Response::new(task));
        }
        self.record_if_queued(&req.project_id, &req.task_id).await?;
        store::task(&self.pool, &req.project_id, &req.task_id)
            .await?
            .map(Response::new)
            .ok_or_else(|| RegistryError::NotFound("task").into())
    }

    type GetTaskLogStream = ChunkStream<pb::LogChunk>;

    async fn get_task_log(
        &self,
        req: Request<pb::GetTaskLogRequest>,
    ) -> Result<Response<Self::GetTaskLogStream>, Status> {
        let req = req.into_inner();
        need_id("task", &req.task_id)?;
        let mut log =
            store::task_log(&self.pool, &req.project_id, &req.task_id, req.stdout_only).await?;
        if log.is_none() {
            self.record_if_queued(&req.project_id, &req.task_id).await?;
            log =
                store::task_log(&self.pool, &req.project_id, &req.task_id, req.stdout_only).await?;
        }
        let log = log.ok_or(RegistryError::NotFound("task"))?;
        Ok(Response::new(chunked(log, |data| pb::LogChunk { data })))
    }

    async fn get_code(&self, req: Request<pb::CodeRequest>) -> Result<Response<pb::Code>, Status> {
        let req = req.into_inner();
        need_id("code", &req.code_id)?;
        Ok(Response::new(
            store::code(&self.pool, &req.project_id, &req.code_id).await?,
        ))
    }

    async fn delete_code(
        &self,
        req: Request<pb::CodeRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let req = req.into_inner();
        need_id("code", &req.code_id)?;
        store::delete_code(&self.pool, &req.project_id, &req.code_id).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn list_revisions(
        &self,
        req: Request<pb::ListRevisionsRequest>,
    ) -> Result<Response<pb::ListCodesResponse>, Status> {
        let req = req.into_inner();
        need_id("code", &req.code_id)?;
        let codes = store::revisions(
            &self.pool,
            &req.project_id,
            &req.code_id,
            req.page,
            per_page(req.per_page),
        )
        .await?;
        Ok(Response::new(pb::ListCodesResponse { codes }))
    }

    async fn get_revision(
        &self,
        req: Request<pb::GetRevisionRequest>,
    ) -> Result<Response<pb::Code>, Status> {
        let req = req.into_inner();
        need_id("code", &req.code_id)?;
        Ok(Response::new(
            store::revision(&self.pool, &req.project_id, &req.code_id, req.rev).await?,
        ))
    }

    async fn code_stats(
        &self,
        req: Request<pb::CodeRequest>,
    ) -> Result<Response<pb::CodeStatsResponse>, Status> {
        let req = req.into_inner();
        need_id("code", &req.code_id)?;
        self.catch_up().await;
        let counts = store::code_stats(&self.pool, &req.project_id, &req.code_id).await?;
        Ok(Response::new(pb::CodeStatsResponse { counts }))
    }

    async fn set_code_paused(
        &self,
        req: Request<pb::SetCodePausedRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let req = req.into_inner();
        need_id("code", &req.code_id)?;
        store::set_code_paused(&self.pool, &req.project_id, &req.code_id, req.paused).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn cancel_all(
        &self,
        req: Request<pb::CodeRequest>,
    ) -> Result<Response<pb::CancelAllResponse>, Status> {
        let req = req.into_inner();
        need_id("code", &req.code_id)?;
        self.catch_up().await;
        let cancelled = store::cancel_all(&self.pool, &req.project_id, &req.code_id).await?;
        Ok(Response::new(pb::CancelAllResponse { cancelled }))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let req = req.into_inner();
        self.catch_up().await;
        let tasks = store::list_tasks(&self.pool, &req, per_page(req.per_page)).await?;
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }

    async fn cancel_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let req = req.into_inner();
        need_id("task", &req.task_id)?;
        let mut status = store::cancel_task(&self.pool, &req.project_id, &req.task_id).await?;
        if status.is_none() {
            self.record_if_queued(&req.project_id, &req.task_id).await?;
            status = store::cancel_task(&self.pool, &req.project_id, &req.task_id).await?;
        }
        let status = status.ok_or(RegistryError::NotFound("task"))?;
        if status == "cancelled" {
            self.announce_cancel(&req.task_id).await;
        }
        Ok(Response::new(pb::CancelTaskResponse { status }))
    }

    async fn set_progress(
        &self,
        req: Request<pb::SetProgressRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let req = req.into_inner();
        need_id("task", &req.task_id)?;
        if !(0..=100).contains(&req.percent) {
            return Err(RegistryError::InvalidArgument("percent must be 0-100".into()).into());
        }
        let mut found = store::set_progress(
            &self.pool,
            &req.project_id,
            &req.task_id,
            req.percent,
            &req.msg,
        )
        .await?;
        if !found {
            self.record_if_queued(&req.project_id, &req.task_id).await?;
            found = store::set_progress(
                &self.pool,
                &req.project_id,
                &req.task_id,
                req.percent,
                &req.msg,
            )
            .await?;
        }
        if !found {
            return Err(RegistryError::NotFound("task").into());
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn create_schedules(
        &self,
        req: Request<pb::CreateSchedulesRequest>,
    ) -> Result<Response<pb::CreateSchedulesResponse>, Status> {
        let req = req.into_inner();
        for spec in &req.schedules {
            store::code_by_name(&self.pool, &req.project_id, &spec.code_name).await?;
        }
        let ids = store::create_schedules(&self.pool, &req.project_id, &req.schedules).await?;
        Ok(Response::new(pb::CreateSchedulesResponse { ids }))
    }

    async fn list_schedules(
        &self,
        req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let req = req.into_inner();
        let schedules = store::list_schedules(
            &self.pool,
            &req.project_id,
            req.page,
            per_page(req.per_page),
        )
        .await?;
        Ok(Response::new(pb::ListSchedulesResponse { schedules }))
    }

    async fn get_schedule(
        &self,
        req: Request<pb::ScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let req = req.into_inner();
        need_id("schedule", &req.schedule_id)?;
        Ok(Response::new(
            store::schedule(&self.pool, &req.project_id, &req.schedule_id).await?,
        ))
    }

    async fn update_schedule(
        &self,
        req: Request<pb::UpdateScheduleRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let req = req.into_inner();
        need_id("schedule", &req.schedule_id)?;
        let spec = req
            .spec
            .ok_or_else(|| RegistryError::InvalidArgument("no schedule".into()))?;
        store::code_by_name(&self.pool, &req.project_id, &spec.code_name).await?;
        store::update_schedule(&self.pool, &req.project_id, &req.schedule_id, &spec).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn cancel_schedule(
        &self,
        req: Request<pb::ScheduleRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let req = req.into_inner();
        need_id("schedule", &req.schedule_id)?;
        store::cancel_schedule(&self.pool, &req.project_id, &req.schedule_id).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn create_webhook_token(
        &self,
        req: Request<pb::CodeRequest>,
    ) -> Result<Response<pb::WebhookToken>, Status> {
        let req = req.into_inner();
        need_id("code", &req.code_id)?;
        Ok(Response::new(
            store::create_webhook_token(&self.pool, &req.project_id, &req.code_id).await?,
        ))
    }

    async fn list_webhook_tokens(
        &self,
        req: Request<pb::CodeRequest>,
    ) -> Result<Response<pb::ListWebhookTokensResponse>, Status> {
        let req = req.into_inner();
        need_id("code", &req.code_id)?;
        let tokens = store::list_webhook_tokens(&self.pool, &req.project_id, &req.code_id).await?;
        Ok(Response::new(pb::ListWebhookTokensResponse { tokens }))
    }

    async fn revoke_webhook_token(
        &self,
        req: Request<pb::RevokeWebhookTokenRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let req = req.into_inner();
        need_id("code", &req.code_id)?;
        need_id("webhook token", &req.token_id)?;
        store::revoke_webhook_token(&self.pool, &req.project_id, &req.code_id, &req.token_id)
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn start_task(
        &self,
        req: Request<pb::StartTaskRequest>,
    ) -> Result<Response<pb::StartTaskResponse>, Status> {
        use pb::start_task_response::Decision;
        let req = req.into_inner();
        let envelope = req
            .envelope
            .ok_or_else(|| RegistryError::InvalidArgument("no envelope".into()))?;
        need_id("task", &envelope.task_id)?;
        record_task_id(&envelope.task_id);
        let lease_ms = req.lease_ms.clamp(1_000, 600_000);
        let call = coalesce::StartCall {
            envelope,
            payload: req.payload,
            runner_id: req.runner_id,
            lease_ms,
        };
        let decision = match self.starts.call(call).await.ok_or_else(unanswered)?? {
            Start::Run(run) => Decision::Run(run),
            Start::Skip(reason) => Decision::Skip(pb::Skip { reason }),
            Start::Defer { after_ms, reason } => Decision::Defer(pb::Defer {
                retry_after_ms: after_ms,
                reason,
            }),
            Start::NeedPayload => Decision::NeedPayload(pb::NeedPayload {}),
        };
        Ok(Response::new(pb::StartTaskResponse {
            decision: Some(decision),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let req = req.into_inner();
        record_task_id(&req.task_id);
        let lease_ms = req.lease_ms.clamp(1_000, 600_000);
        let keep_running =
            store::heartbeat(&self.pool, &req.task_id, req.attempt, lease_ms).await?;
        Ok(Response::new(pb::HeartbeatResponse { keep_running }))
    }

    async fn release_task(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let req = req.into_inner();
        record_task_id(&req.task_id);
        store::release_task(&self.pool, &req.task_id, req.attempt).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn append_log(
        &self,
        req: Request<pb::AppendLogRequest>,
    ) -> Result<Response<pb::AppendLogResponse>, Status> {
        let req = req.into_inner();
        record_task_id(&req.task_id);
        let done = store::append_log(
            &self.pool,
            &req.task_id,
            req.attempt,
            &req.entries,
            self.log_max_bytes,
        )
        .await?;
        Ok(Response::new(pb::AppendLogResponse {
            accepted: done.accepted,
            log_size: done.log_size,
            truncated: done.truncated,
        }))
    }

    async fn finish_task(
        &self,
        req: Request<pb::FinishTaskRequest>,
    ) -> Result<Response<pb::FinishTaskResponse>, Status> {
        let req = req.into_inner();
        record_task_id(&req.task_id);
        if req.status == "complete" {
            // Nothing to retry: batched with the other completions arriving now.
            let call = coalesce::CompleteCall {
                task_id: req.task_id,
                attempt: req.attempt,
                msg: req.msg,
                error_class: req.error_class,
            };
            let (recorded, status) = self.completes.call(call).await.ok_or_else(unanswered)??;
            return Ok(Response::new(pb::FinishTaskResponse { recorded, status }));
        }
        let finished = store::finish_task(
            &self.pool,
            &req.task_id,
            req.attempt,
            &req.status,
            &req.msg,
            &req.error_class,
        )
        .await?;
        if let Some((retry, payload)) = &finished.retry {
            // Durable before the status is: if this fails, the runner reports again.
            self.publish(retry, payload.clone()).await?;
        }
        let (recorded, status) = (finished.recorded, finished.status.clone());
        finished.commit().await?;
        Ok(Response::new(pb::FinishTaskResponse { recorded, status }))
    }
}
