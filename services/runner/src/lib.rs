//! workhook's runner: pulls tasks from JetStream, asks the registry to start each one, runs the
//! worker, streams its output, keeps the task's lease alive while it runs, reports the final
//! status and only then acknowledges the message. Run as many replicas as you like.
#![forbid(unsafe_code)]

mod config;
pub mod executor;
mod logs;
mod metrics;
mod package;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures_util::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;
use workhook_core::stream::PRIORITIES;
use workhook_core::Envelope;
use workhook_proto::{self as pb, registry_client::RegistryClient};

pub use config::Config;
use executor::{Executor, Job, Outcome, ProcessExecutor};

/// How long one pull request waits for tasks.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Past a pull's own expiry, how long the runner waits before giving the pull up for lost.
const FETCH_DEADLINE: Duration = Duration::from_secs(2);
/// While tasks wait in the stream (the last sweep filled every free slot), how long a freed slot
/// waits for others before the runner fetches for all of them at once: one fetch per priority
/// per gathering rather than per freed slot, and their StartTask calls reach the registry
/// together, as one batch. Not when the stream is empty: a new task then starts at once.
const BACKLOG_GATHER: Duration = Duration::from_millis(2);

/// The registry client; its calls carry the current span's trace context (when traces are on).
pub(crate) type Registry = RegistryClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        workhook_core::telemetry::GrpcTraceContext,
    >,
>;

struct Runner {
    registry: Registry,
    /// Stop tokens of the tasks running here, by task id, for cancel announcements.
    running: std::sync::Mutex<std::collections::HashMap<String, CancellationToken>>,
    packages: package::PackageCache,
    executor: ProcessExecutor,
    runner_id: String,
    lease: Duration,
    api_url: Option<String>,
    /// Where payloads too large for a message are.
    payloads: jetstream::object_store::ObjectStore,
    metrics: metrics::RunnerMetrics,
}

/// Runs the runner until `shutdown` is cancelled; then it stops pulling, gives running tasks
/// `drain_secs` to finish, and kills and hands back the rest.
pub async fn run(
    config: Config,
    admin: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let layout = config.nats.layout()?;
    let lease = Duration::from_secs(config.lease_secs.max(3));
    let nats = async_nats::ConnectOptions::new()
        .name("workhook-runner")
        .connect(config.nats.url.as_str())
        .await
        .context("connecting to NATS (NATS_URL)")?;
    let js = jetstream::new(nats.clone());
    let stream = config
        .nats
        .ensure_stream(&layout, &js)
        .await
        .map_err(|e| anyhow::anyhow!("creating stream {}: {e}", layout.stream()))?;
    // The consumers exist (ensure_stream); set their ack wait to this runner's lease.
    let mut consumers = Vec::with_capacity(PRIORITIES.len());
    for priority in PRIORITIES {
        let consumer: PullConsumer = stream
            .create_consumer(layout.runner_config(priority, lease))
            .await
            .map_err(|e| {
                anyhow::anyhow!("updating the runner consumer for priority {priority}: {e}")
            })?;
        consumers.push(consumer);
    }
    let channel = Endpoint::from_shared(config.registry_url.clone())
        .context("WORKHOOK_REGISTRY_URL")?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    let registry =
        RegistryClient::with_interceptor(channel, workhook_core::telemetry::GrpcTraceContext);
    let runner_id = config.runner_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "runner".into());
        format!("{host}-{:08x}", rand_u32())
    });
    let runner = Arc::new(Runner {
        packages: package::PackageCache::new(config.dir.join("packages"), registry.clone()),
        executor: ProcessExecutor::new(&config.dir.join("tasks"), &runner_id),
        registry,
        running: Default::default(),
        runner_id,
        lease,
        api_url: config.api_url.clone(),
        payloads: layout
            .ensure_payload_bucket(&js, config.nats.replicas)
            .await
            .map_err(|e| anyhow::anyhow!("opening the payload bucket: {e}"))?,
        metrics: metrics::RunnerMetrics::new(),
    });
    workhook_core::metrics::spawn_admin(
        admin,
        runner.metrics.registry.clone(),
        {
            let (shutdown, nats) = (shutdown.clone(), nats.clone());
            Arc::new(move || {
                !shutdown.is_cancelled()
                    && nats.connection_state() == async_nats::connection::State::Connected
            })
        },
        shutdown.clone(),
    );
    let cancels = nats
        .subscribe(layout.all_cancels())
        .await
        .context("subscribing to cancel announcements")?;
    let listener = tokio::spawn(listen_for_cancels(runner.clone(), cancels));
    tracing::info!(runner_id = %runner.runner_id, concurrency = config.concurrency, "runner pulling");

    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let tracker = TaskTracker::new();
    // Cancelled when the drain deadline passes: running workers are killed and handed back.
    let abandon = CancellationToken::new();
    let puller = Puller {
        consumers,
        slots: slots.clone(),
        tracker: tracker.clone(),
        runner: runner.clone(),
        abandon: abandon.clone(),
        aging: Duration::from_secs(config.priority_aging_secs.max(1)),
    };
    puller.run(&shutdown).await;

    tracker.close();
    let mut drained = tokio::time::timeout(Duration::from_secs(config.drain_secs), tracker.wait())
        .await
        .is_ok();
    if !drained {
        tracing::warn!("drain deadline passed; handing running tasks back");
        abandon.cancel();
        drained = tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .is_ok();
    }
    if drained {
        // No task runs any more: what the slot directories hold is of no use to anyone.
        runner.executor.remove_dirs();
    }
    listener.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), nats.drain()).await;
    Ok(())
}

/// Stops a task running here as soon as the registry announces its cancellation.
async fn listen_for_cancels(runner: Arc<Runner>, mut cancels: async_nats::Subscriber) {
    while let Some(message) = cancels.next().await {
        let Some(task_id) = message.subject.rsplit('.').next() else {
            continue;
        };
        let stop = runner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(task_id)
            .cloned();
        if let Some(stop) = stop {
            tracing::info!(%task_id, "cancelled; stopping the worker");
            stop.cancel();
        }
    }
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

/// Takes tasks from the three priority consumers into free slots.
///
/// With free slots, a runner sweeps the consumers highest priority first, taking at most as many
/// tasks as it has free slots (so no task waits in a busy runner's buffer while another runner
/// is idle). Only when all three are empty does it wait, with one long pull on each; a task that
/// such a pull delivers when no slot is free is handed back at once (nak) for another runner.
///
/// Starvation: strict priority could leave priority 0 (or 1) waiting forever under a steady
/// backlog of higher priorities. So a lower priority that has not had a task taken for `aging`
/// (WORKHOOK_PRIORITY_AGING_SECS, 30 s) is swept first once: each runner gives every backlogged
/// priority at least one slot per `aging`, which bounds its wait.
struct Puller {
    /// Highest priority first, as `PRIORITIES`.
    consumers: Vec<PullConsumer>,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    runner: Arc<Runner>,
    abandon: CancellationToken,
    aging: Duration,
}

impl Puller {
    async fn run(&self, shutdown: &CancellationToken) {
        let mut last_taken = vec![tokio::time::Instant::now(); self.consumers.len()];
        let mut backlog = false;
        loop {
            let first = tokio::select! {
                p = self.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = shutdown.cancelled() => return,
            };
            if backlog {
                tokio::select! {
                    _ = tokio::time::sleep(BACKLOG_GATHER) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            let mut permits = vec![first];
            while let Ok(p) = self.slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            // Priorities that waited past `aging` go first, once; then highest first.
            let now = tokio::time::Instant::now();
            let mut order: Vec<usize> = (0..self.consumers.len())
                .rev()
                .filter(|&i| now.duration_since(last_taken[i]) > self.aging)
                .collect();
            order.extend(0..self.consumers.len());
            let aged = order.len() - self.consumers.len();
            let mut took = false;
            for (round, i) in order.into_iter().enumerate() {
                if permits.is_empty() {
                    break;
                }
                let taken = if round < aged {
                    // A starving priority gets one slot, not all of them.
                    let mut one: Vec<_> = permits.pop().into_iter().collect();
                    let taken = self.sweep(i, &mut one).await;
                    permits.extend(one);
                    taken
                } else {
                    self.sweep(i, &mut permits).await
                };
                if taken > 0 {
                    last_taken[i] = tokio::time::Instant::now();
                    took = true;
                } else if now.duration_since(last_taken[i]) > self.aging {
                    // Nothing waiting there: nothing is starving.
                    last_taken[i] = now;
                }
            }
            // Every free slot was filled: more tasks are likely waiting.
            backlog = permits.is_empty();
            if took || permits.is_empty() {
                continue;
            }
            if let Some(i) = self.wait_for_any(permits, shutdown).await {
                last_taken[i] = tokio::time::Instant::now();
            }
        }
    }

    fn dispatch(&self, message: jetstream::Message, permit: OwnedSemaphorePermit) {
        let runner = self.runner.clone();
        let abandon = self.abandon.clone();
        self.tracker
            .spawn(async move { runner.handle(message, permit, abandon).await });
    }

    /// Takes what consumer `i` has now, up to the free slots; returns how many it took.
    async fn sweep(&self, i: usize, permits: &mut Vec<OwnedSemaphorePermit>) -> usize {
        let fetched = self.consumers[i]
            .fetch()
            .max_messages(permits.len())
            .messages()
            .await;
        let mut messages = match fetched {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "fetch failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                return 0;
            }
        };
        let mut taken = 0;
        // A fetch answers at once; the deadline only guards against a connection that died
        // mid-answer (the server's end-of-batch would never come).
        while let Ok(Some(next)) = tokio::time::timeout(FETCH_DEADLINE, messages.next()).await {
            match next {
                Ok(message) => match permits.pop() {
                    Some(permit) => {
                        self.dispatch(message, permit);
                        taken += 1;
                    }
                    None => nak(&message, Duration::ZERO).await,
                },
                Err(e) => {
                    tracing::debug!(error = %e, "fetch ended");
                    break;
                }
            }
        }
        taken
    }

    /// Everything is empty: one long pull on each consumer, until a task arrives (returns the
    /// index of its consumer), the pulls expire, or shutdown. Pulls still open when this returns
    /// are read to their end in the background, so nothing they deliver is left unread.
    async fn wait_for_any(
        &self,
        mut permits: Vec<OwnedSemaphorePermit>,
        shutdown: &CancellationToken,
    ) -> Option<usize> {
        let mut pulls = Vec::with_capacity(self.consumers.len());
        for (i, consumer) in self.consumers.iter().enumerate() {
            match consumer
                .batch()
                .max_messages(1)
                .expires(PULL_EXPIRES)
                .messages()
                .await
            {
                Ok(batch) => pulls.push(batch.map(move |m| (i, m)).boxed()),
                Err(e) => tracing::warn!(error = %e, "pull failed"),
            }
        }
        if pulls.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return None;
        }
        let mut all = futures_util::stream::select_all(pulls);
        // The pulls expire on the server; the deadline covers a server that went away meanwhile.
        let first = tokio::select! {
            m = tokio::time::timeout(PULL_EXPIRES + FETCH_DEADLINE, all.next()) => m.ok().flatten(),
            _ = shutdown.cancelled() => None,
        };
        let taken = match first {
            Some((i, Ok(message))) => {
                if let Some(permit) = permits.pop() {
                    self.dispatch(message, permit);
                }
                Some(i)
            }
            _ => None,
        };
        drop(permits);
        // The other pulls stay open until they deliver or expire: read them out, running what
        // they bring if a slot is free and handing it back otherwise.
        let slots = self.slots.clone();
        let runner = self.runner.clone();
        let tracker = self.tracker.clone();
        let abandon = self.abandon.clone();
        let until = tokio::time::Instant::now() + PULL_EXPIRES + FETCH_DEADLINE;
        let stopping = shutdown.clone();
        // Not tracked: shutdown need not wait for these pulls to expire; what they bring then is
        // handed back.
        tokio::spawn(async move {
            while let Ok(Some((_, next))) = tokio::time::timeout_at(until, all.next()).await {
                let Ok(message) = next else { continue };
                if stopping.is_cancelled() {
                    nak(&message, Duration::ZERO).await;
                    continue;
                }
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let runner = runner.clone();
                        let abandon = abandon.clone();
                        tracker.spawn(async move { runner.handle(message, permit, abandon).await });
                    }
                    Err(_) => nak(&message, Duration::ZERO).await,
                }
            }
        });
        taken
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn nak(message: &jetstream::Message, after: Duration) {
    if let Err(e) = message.ack_with(AckKind::Nak(Some(after))).await {
        tracing::warn!(error = %e, "nak failed; the message is redelivered after its ack wait");
    }
}

impl Runner {
    async fn handle(
        self: Arc<Self>,
        message: jetstream::Message,
        slot: OwnedSemaphorePermit,
        abandon: CancellationToken,
    ) {
        let envelope = match Envelope::from_delivered(&message) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, subject = %message.subject, "unreadable task message; dropped");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        // Everything done for this delivery of the task happens in this span, spawned work
        // included, so every log line carries the task id; with traces on, it continues the
        // trace that queued the task (the message's traceparent).
        let span = tracing::info_span!(
            "task",
            otel.kind = "consumer",
            task_id = %envelope.task_id,
            project_id = %envelope.project_id,
            code_name = %envelope.code_name,
            attempt = tracing::field::Empty,
            task.status = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        workhook_core::telemetry::set_parent_from(&span, message.headers.as_ref());
        let status = self
            .handle_task(message, envelope, slot, abandon)
            .instrument(span.clone())
            .await;
        span.record("task.status", status);
        if matches!(status, "error" | "timeout") {
            span.record("otel.status_code", "ERROR");
        }
    }

    /// Runs one delivery of a task; returns what became of it: the final status, or `skipped`,
    /// `deferred`, `not_started`, `handed_back`, `not_reported`.
    async fn handle_task(
        &self,
        message: jetstream::Message,
        envelope: Envelope,
        _slot: OwnedSemaphorePermit,
        abandon: CancellationToken,
    ) -> &'static str {
        let due_in = envelope.due_at() - now_ms();
        if due_in > 0 {
            nak(&message, Duration::from_millis(due_in as u64)).await;
            return "deferred";
        }
        let started = self
            .start(&envelope, &message)
            .instrument(tracing::info_span!("start_task"))
            .await;
        let run = match started {
            Ok(pb::start_task_response::Decision::Run(run)) => run,
            Ok(pb::start_task_response::Decision::Skip(skip)) => {
                tracing::debug!(task_id = %envelope.task_id, reason = %skip.reason, "skipped");
                let _ = message.ack().await;
                return "skipped";
            }
            Ok(pb::start_task_response::Decision::Defer(defer)) => {
                tracing::debug!(task_id = %envelope.task_id, reason = %defer.reason, "deferred");
                nak(
                    &message,
                    Duration::from_millis(defer.retry_after_ms.max(100) as u64),
                )
                .await;
                return "deferred";
            }
            Ok(pb::start_task_response::Decision::NeedPayload(_)) | Err(_) => {
                nak(&message, Duration::from_secs(1)).await;
                return "not_started";
            }
        };
        let task_id = envelope.task_id.clone();
        let attempt = run.attempt;
        tracing::Span::current().record("attempt", attempt);
        tracing::info!(%task_id, attempt, code = %envelope.code_name, "running");

        // Keep both leases alive while the task is ours: the message's (ack progress) and the
        // registry's (heartbeat). A refused heartbeat means the task is no longer ours.
        let stop = abandon.child_token();
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task_id.clone(), stop.clone());
        let keeper = tokio::spawn(
            keep_lease(
                self.registry.clone(),
                message.clone(),
                task_id.clone(),
                attempt,
                self.lease,
                stop.clone(),
            )
            .in_current_span(),
        );

        self.metrics.slots_busy.inc();
        let started = std::time::Instant::now();
        let outcome = match self.payload(&envelope, &message).await {
            Ok(payload) => self.execute(&envelope, run, payload, stop.clone()).await,
            Err(e) => Err(e),
        };
        self.metrics.slots_busy.dec();
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&task_id);
        let abandoned = abandon.is_cancelled();
        let lost = stop.is_cancelled() && !abandoned;
        let (status, msg, error_class) = match &outcome {
            Ok(o) => o.report(),
            Err(e) => (
                "error",
                format!("workhook could not run the task: {e:#}"),
                "Runner Error".to_string(),
            ),
        };
        if abandoned {
            // Shutting down past the drain deadline: hand the task back, so the next runner
            // takes it at once (if this fails, it does once the lease lapses).
            keeper.abort();
            let released = self
                .registry
                .clone()
                .release_task(pb::HeartbeatRequest {
                    task_id: task_id.clone(),
                    attempt,
                    lease_ms: 0,
                })
                .await;
            if let Err(e) = released {
                tracing::warn!(%task_id, error = %e, "handing the task back failed; its lease will lapse");
            }
            nak(&message, Duration::ZERO).await;
            return "handed_back";
        }
        if !lost {
            if let Err(e) = self
                .finish(&task_id, attempt, status, &msg, &error_class)
                .instrument(tracing::info_span!("finish_task", task.status = status))
                .await
            {
                tracing::error!(%task_id, error = %e, "could not report the result; the task will run again");
                keeper.abort();
                nak(&message, Duration::ZERO).await;
                return "not_reported";
            }
        }
        keeper.abort();
        // Not confirmed by the server (no round trip per task): the status is recorded, so an
        // ack that is lost only means a redelivery, which StartTask answers with a skip.
        if let Err(e) = message.ack().await {
            tracing::warn!(%task_id, error = %e, "ack failed; a redelivery will be skipped");
        }
        self.metrics
            .finished(&envelope.code_name, status, started.elapsed().as_secs_f64());
        tracing::info!(%task_id, attempt, status, "finished");
        status
    }

    async fn start(
        &self,
        envelope: &Envelope,
        message: &jetstream::Message,
    ) -> Result<pb::start_task_response::Decision, tonic::Status> {
        // The payload goes along (a reference count, not a copy): when the recorder has not
        // recorded the task yet, which is usual for a task started the moment it is queued, the
        // registry records it from this call rather than asking for the payload in a second one.
        let request = pb::StartTaskRequest {
            envelope: Some(envelope.into()),
            runner_id: self.runner_id.clone(),
            lease_ms: self.lease.as_millis() as i64,
            payload: Some(message.payload.clone()),
        };
        let decision = self
            .registry
            .clone()
            .start_task(request)
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "StartTask failed"))?
            .into_inner()
            .decision
            .ok_or_else(|| tonic::Status::internal("StartTask answered no decision"))?;
        match decision {
            pb::start_task_response::Decision::NeedPayload(_) => Err(tonic::Status::internal(
                "StartTask asked for the payload it was given",
            )),
            other => Ok(other),
        }
    }

    /// The task's payload: the message body, or the object it names in the payload bucket.
    async fn payload(
        &self,
        envelope: &Envelope,
        message: &jetstream::Message,
    ) -> anyhow::Result<bytes::Bytes> {
        let Some(object) = &envelope.payload_ref else {
            return Ok(message.payload.clone());
        };
        use tokio::io::AsyncReadExt;
        let mut reader = self
            .payloads
            .get(object)
            .await
            .with_context(|| format!("fetching the payload {object}"))?;
        let mut data = Vec::new();
        reader
            .read_to_end(&mut data)
            .await
            .with_context(|| format!("reading the payload {object}"))?;
        Ok(data.into())
    }

    async fn execute(
        &self,
        envelope: &Envelope,
        run: pb::Run,
        payload: bytes::Bytes,
        stop: CancellationToken,
    ) -> anyhow::Result<Outcome> {
        let package = if run.checksum.is_empty() {
            None
        } else {
            Some(
                self.packages
                    .get(&run.checksum)
                    .instrument(tracing::info_span!("fetch_package"))
                    .await?,
            )
        };
        let (tx, rx) = mpsc::channel(64);
        let shipper = tokio::spawn(
            logs::LogShipper {
                registry: self.registry.clone(),
                task_id: envelope.task_id.clone(),
                attempt: run.attempt,
            }
            .run(rx)
            .in_current_span(),
        );
        let mut extra_env = vec![
            ("WORKHOOK_PROJECT_ID", envelope.project_id.clone()),
            ("WORKHOOK_TASK_TOKEN", run.task_token.clone()),
        ];
        if let Some(url) = &self.api_url {
            extra_env.push(("WORKHOOK_API_URL", url.trim_end_matches('/').to_string()));
        }
        let job = Job {
            task_id: envelope.task_id.clone(),
            attempt: run.attempt,
            command: run.command,
            config: run.config,
            env_vars: run.env_vars,
            payload,
            timeout: Duration::from_secs(u64::from(run.timeout.max(1) as u32)),
            package,
            extra_env,
            request: envelope.request.clone(),
        };
        let outcome = self
            .executor
            .run(job, tx, stop)
            .instrument(tracing::info_span!("run_worker"))
            .await;
        let _ = shipper.await;
        outcome
    }

    /// Reports the final status, retrying while the registry is unreachable.
    async fn finish(
        &self,
        task_id: &str,
        attempt: i32,
        status: &str,
        msg: &str,
        error_class: &str,
    ) -> Result<(), tonic::Status> {
        let mut delay = Duration::from_millis(200);
        let give_up = tokio::time::Instant::now() + self.lease * 2;
        loop {
            let result = self
                .registry
                .clone()
                .finish_task(pb::FinishTaskRequest {
                    task_id: task_id.to_string(),
                    attempt,
                    status: status.to_string(),
                    msg: msg.to_string(),
                    error_class: error_class.to_string(),
                })
                .await;
            match result {
                Ok(r) => {
                    let r = r.into_inner();
                    if !r.recorded {
                        tracing::warn!(%task_id, attempt, current = %r.status, "result not recorded: the attempt no longer holds the task");
                    }
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() < give_up => {
                    tracing::warn!(%task_id, error = %e, "reporting the result failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Renews the message's ack deadline and the registry's lease every third of the lease, until
/// aborted; cancels `stop` if the registry says the task is no longer this attempt's.
async fn keep_lease(
    registry: Registry,
    message: jetstream::Message,
    task_id: String,
    attempt: i32,
    lease: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = message.ack_with(AckKind::Progress).await {
            tracing::warn!(%task_id, error = %e, "renewing the message lease failed");
        }
        let beat = registry
            .clone()
            .heartbeat(pb::HeartbeatRequest {
                task_id: task_id.clone(),
                attempt,
                lease_ms: lease.as_millis() as i64,
            })
            .await;
        match beat {
            Ok(r) if !r.get_ref().keep_running => {
                tracing::info!(%task_id, attempt, "the task is no longer ours; stopping it");
                stop.cancel();
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%task_id, error = %e, "heartbeat failed"),
        }
    }
}
