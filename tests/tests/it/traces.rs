//! Traces and logs: one trace follows a webhook from the ingress through the runner to the final
//! status (exported over OTLP to a collector in the test), the trace context rides in the task
//! message's headers, and JSON log lines written while a task is handled carry its task id.
//!
//! Each test installs the process's global subscriber, so each runs in a process of its own:
//! cargo-nextest gives it one; under plain `cargo test` it starts itself again alone.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tracing_subscriber::EnvFilter;
use workhook_core::envelope::RETRY_OF;

use workhook_core::telemetry::{self, Telemetry, TelemetryConfig};
use workhook_tests::telemetry::{CollectedSpan, LogLines, OtlpCollector};
use workhook_tests::{accepted_id, Project, Stack};

const WITHIN: Duration = Duration::from_secs(30);

/// Whether the test should run here: true in a process of its own; otherwise it runs the test
/// named `name` (its path in this binary) in a new process, checks that it passed, and answers
/// false.
fn in_own_process(name: &str) -> bool {
    const ALONE: &str = "WORKHOOK_TEST_ALONE";
    if std::env::var_os("NEXTEST").is_some() || std::env::var_os(ALONE).is_some() {
        return true;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, "1")
        .status()
        .expect("running the test in a process of its own");
    assert!(status.success(), "{name} failed in its own process");
    false
}

/// Installs the global subscriber: JSON logs into `lines` (the runner's at debug), and traces
/// to `collector` if given.
fn install(lines: &LogLines, collector: Option<&OtlpCollector>) -> Telemetry {
    let config = TelemetryConfig {
        service_name: "workhook-tests".into(),
        otlp_endpoint: collector.map(|c| c.endpoint.clone()),
        json_logs: true,
    };
    telemetry::install(
        &config,
        EnvFilter::new("info,workhook_runner=debug"),
        lines.clone(),
    )
    .expect("installing the global subscriber")
}

/// Sends a webhook and returns its task id.
async fn webhook(stack: &Stack, p: &Project, code: &str) -> String {
    let r = stack.webhook(p, code, "payload").await;
    accepted_id(r).await
}

/// The task messages published under the stack's prefix, as a core NATS subscriber sees them.
async fn watch_task_messages(stack: &Stack) -> async_nats::Subscriber {
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let messages = nats
        .subscribe(format!("{}.tasks.>", stack.prefix))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    messages
}

/// What identifies a task message.
enum Find<'a> {
    /// The task's own message: its envelope names the task, or, for a task named by its stream
    /// sequence (which a core subscriber does not see), names none and was received in the
    /// second the id carries.
    Task(&'a str),
    /// The message whose header `.0` is `.1`.
    Header(&'a str, &'a str),
}

/// The task id and the headers of the next task message that `find` picks.
async fn message_headers(
    messages: &mut async_nats::Subscriber,
    find: Find<'_>,
) -> (String, async_nats::HeaderMap) {
    loop {
        let message = tokio::time::timeout(WITHIN, messages.next())
            .await
            .unwrap_or_else(|_| panic!("no task message for the task"))
            .unwrap();
        let headers = message.headers.unwrap_or_default();
        let sequence = match find {
            Find::Task(id) => workhook_core::ids::sequence_of(id).map_or(1, |(_, s)| s),
            Find::Header(..) => 1,
        };
        let task_id = workhook_core::Envelope::from_message(Some(&headers), sequence)
            .expect("a task message carries its envelope")
            .task_id;
        let found = match find {
            Find::Task(id) => task_id == id,
            Find::Header(name, value) => headers.get(name).is_some_and(|v| v.as_str() == value),
        };
        if found {
            return (task_id, headers);
        }
    }
}

/// The first span named `name` whose `task_id` attribute is `task_id`.
fn span<'a>(spans: &'a [CollectedSpan], name: &str, task_id: &str) -> Option<&'a CollectedSpan> {
    spans
        .iter()
        .find(|s| s.name == name && s.attribute("task_id") == Some(task_id))
}

/// Whether `ancestor` is `span`'s parent, or its parent's, and so on.
fn descends_from(spans: &[CollectedSpan], span: &CollectedSpan, ancestor: &CollectedSpan) -> bool {
    let mut at = span;
    for _ in 0..64 {
        if at.parent_span_id.is_empty() {
            return false;
        }
        if at.parent_span_id == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|s| s.span_id == at.parent_span_id) {
            Some(parent) => at = parent,
            None => return false,
        }
    }
    false
}

/// Flushes the exporter until the runner's `task` span of every task in `task_ids` has arrived
/// (a runner ends it after it reports the final status, so shortly after the API shows it).
async fn collect_task_spans(
    telemetry: &Telemetry,
    collector: &OtlpCollector,
    task_ids: &[&str],
) -> Vec<CollectedSpan> {
    let until = Instant::now() + WITHIN;
    loop {
        telemetry.force_flush().await;
        let spans = collector.spans();
        if task_ids.iter().all(|id| span(&spans, "task", id).is_some()) {
            return spans;
        }
        assert!(
            Instant::now() < until,
            "the task spans of {task_ids:?} never arrived; the collector has {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The JSON lines of the runner (its crate's targets) whose span list holds a `task` span.
fn runner_task_lines(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("workhook_runner"))
        })
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["name"] == "task"))
        })
        .collect()
}

/// The runner's lines that name `message`.
fn lines_saying<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["fields"]["message"] == message)
        .collect()
}

/// The `task_id` of the outermost `task` span of a line.
fn task_of(line: &Value) -> Option<&str> {
    line["spans"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "task")?["task_id"]
        .as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_webhook_from_the_ingress_through_the_runner_to_its_status() {
    if !in_own_process(
        "traces::one_trace_follows_a_webhook_from_the_ingress_through_the_runner_to_its_status",
    ) {
        return;
    }
    let collector = OtlpCollector::start().await;
    let lines = LogLines::default();
    let telemetry = install(&lines, Some(&collector));
    assert!(telemetry.exports_traces());

    let stack = Stack::start().await;
    let p = stack.create_project("traces").await;
    stack.upload_script(&p, "ok", "echo hello").await;
    stack
        .upload_code(
            &p,
            json!({"name": "flaky", "command": "sh run.sh", "retries": 1, "retries_delay": 0}),
            &[("run.sh", "echo failing >&2; exit 3", 0o644)],
        )
        .await;
    let mut messages = watch_task_messages(&stack).await;

    let id = webhook(&stack, &p, "ok").await;
    let (_, headers) = message_headers(&mut messages, Find::Task(&id)).await;
    let traceparent = headers
        .get("traceparent")
        .expect("the task message carries a traceparent")
        .as_str()
        .to_string();
    let task = stack.wait_done(&p, &id, WITHIN).await;
    assert_eq!(task["status"], "complete", "{task}");

    let failing = webhook(&stack, &p, "flaky").await;
    let failed = stack.wait_done(&p, &failing, WITHIN).await;
    assert_eq!(failed["status"], "error", "{failed}");
    let (retry, headers) = message_headers(&mut messages, Find::Header(RETRY_OF, &failing)).await;
    assert!(headers.get("traceparent").is_some(), "{headers:?}");
    stack.wait_done(&p, &retry, WITHIN).await;

    let spans = collect_task_spans(&telemetry, &collector, &[&id, &failing, &retry]).await;
    let by_name = |name: &str| {
        span(&spans, name, &id).unwrap_or_else(|| panic!("no {name} span for {id} in {spans:#?}"))
    };

    // The ingress's webhook span and the runner's task span: one trace, the task a descendant
    // of the webhook, and the message carried the webhook's context.
    let webhook_span = by_name("webhook");
    let task_span = by_name("task");
    assert_eq!(
        webhook_span.parent_span_id, "",
        "the webhook starts the trace"
    );
    assert_eq!(task_span.trace_id, webhook_span.trace_id);
    assert!(
        descends_from(&spans, task_span, webhook_span),
        "task {task_span:#?} does not descend from webhook {webhook_span:#?}"
    );
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", webhook_span.trace_id, webhook_span.span_id)
    );
    assert_eq!(webhook_span.attribute("code_name"), Some("ok"));
    assert_eq!(
        webhook_span.attribute("http.response.status_code"),
        Some("200")
    );

    // The final status is on the task span, and the runner's steps are its children.
    assert_eq!(task_span.attribute("task.status"), Some("complete"));
    assert_eq!(task_span.attribute("attempt"), Some("1"));
    for step in ["start_task", "fetch_package", "run_worker", "finish_task"] {
        let child = spans
            .iter()
            .find(|s| s.name == step && s.parent_span_id == task_span.span_id)
            .unwrap_or_else(|| panic!("no {step} span under the task span in {spans:#?}"));
        assert_eq!(child.trace_id, task_span.trace_id);
    }
    let finish = spans
        .iter()
        .find(|s| s.name == "finish_task" && s.parent_span_id == task_span.span_id)
        .unwrap();
    assert_eq!(finish.attribute("task.status"), Some("complete"));
    // The registry's side of FinishTask continues the trace through the gRPC metadata.
    let served = span(&spans, "Registry/FinishTask", &id)
        .unwrap_or_else(|| panic!("no FinishTask server span in {spans:#?}"));
    assert_eq!(served.parent_span_id, finish.span_id);

    // A retry continues the trace of the attempt that failed.
    let failed_span = span(&spans, "task", &failing).unwrap();
    let retry_span = span(&spans, "task", &retry).unwrap();
    assert_eq!(failed_span.attribute("task.status"), Some("error"));
    assert_eq!(retry_span.trace_id, failed_span.trace_id);
    assert!(descends_from(&spans, retry_span, failed_span));
    assert_ne!(failed_span.trace_id, task_span.trace_id);

    // The JSON log lines of the task carry its trace id as well as its task id.
    let lines = lines.json();
    let running = lines_saying(&lines, "running");
    let ours: Vec<_> = running
        .iter()
        .filter(|l| task_of(l) == Some(id.as_str()))
        .collect();
    assert_eq!(ours.len(), 1, "{running:#?}");
    assert_eq!(ours[0]["spans"][0]["trace_id"], task_span.trace_id.as_str());

    drop(stack);
    telemetry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_of_a_task_carry_its_id_and_no_trace_context_rides_when_traces_are_off() {
    if !in_own_process("traces::json_log_lines_of_a_task_carry_its_id_and_no_trace_context_rides_when_traces_are_off") {
        return;
    }
    let lines = LogLines::default();
    let telemetry = install(&lines, None);
    assert!(!telemetry.exports_traces());

    let stack = Stack::start().await;
    let p = stack.create_project("logs").await;
    stack
        .upload_script(&p, "ok", "echo hello; echo oops >&2")
        .await;
    let mut messages = watch_task_messages(&stack).await;
    let id = webhook(&stack, &p, "ok").await;
    let (_, headers) = message_headers(&mut messages, Find::Task(&id)).await;
    assert!(headers.get("traceparent").is_none(), "{headers:?}");
    let task = stack.wait_done(&p, &id, WITHIN).await;
    assert_eq!(task["status"], "complete", "{task}");

    // The runner writes "finished" once the status is reported; the shipper's line comes from
    // a task of its own, spawned for the worker's output.
    let until = Instant::now() + WITHIN;
    let lines = loop {
        let lines = lines.json();
        if !lines_saying(&lines, "finished").is_empty() {
            break lines;
        }
        assert!(Instant::now() < until, "the runner never said finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for message in ["running", "the worker's output is shipped", "finished"] {
        let said = lines_saying(&lines, message);
        assert_eq!(said.len(), 1, "{message}: {said:#?}");
        assert_eq!(task_of(said[0]), Some(id.as_str()), "{:#}", said[0]);
        assert_eq!(said[0]["span"]["task_id"], id.as_str(), "{:#}", said[0]);
    }
    // Every line the runner wrote inside a task span names this task, and none a trace id.
    let task_lines = runner_task_lines(&lines);
    assert!(task_lines.len() >= 3, "{task_lines:#?}");
    for line in task_lines {
        assert_eq!(task_of(line), Some(id.as_str()), "{line:#}");
        assert!(line["spans"][0].get("trace_id").is_none(), "{line:#}");
    }
    drop(stack);
    telemetry.shutdown().await;
}
