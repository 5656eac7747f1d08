//! The task lifecycle: concurrency limits across runners, automatic retries, log caps, and
//! transitions guarded by (task, attempt).

use std::time::Duration;

use serde_json::{json, Value};
use workhook_proto as pb;
use workhook_tests::{Project, Stack, StackOptions};

const WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_holds_across_runners_without_blocking_other_codes() {
    let stack = Stack::start_with(StackOptions {
        runners: 2,
        concurrency: 4,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("limits").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("intervals");
    // Each run records its start and end (ms); the limit is 2 at a time.
    let script = r#"f="$(cat "$PAYLOAD_FILE")"; s=$(date +%s%3N); sleep 0.4; echo "$s $(date +%s%3N)" >> "$f""#;
    stack
        .upload_code(
            &p,
            json!({"name": "limited", "command": "sh run.sh", "max_concurrency": 2}),
            &[("run.sh", script, 0o644)],
        )
        .await;
    stack.upload_script(&p, "free", "echo free").await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(
            stack
                .queue(
                    &p,
                    json!({"code_name": "limited", "payload": log.to_str().unwrap()}),
                )
                .await,
        );
    }
    // Another code's task is not held up behind the limited backlog.
    let free = stack.queue(&p, json!({"code_name": "free"})).await;
    let started = std::time::Instant::now();
    assert_eq!(
        stack.wait_done(&p, &free, WITHIN).await["status"],
        "complete"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    for id in &ids {
        assert_eq!(stack.wait_done(&p, id, WITHIN).await["status"], "complete");
    }
    let intervals: Vec<(i64, i64)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let mut it = l.split_whitespace().map(|n| n.parse::<i64>().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        })
        .collect();
    assert_eq!(intervals.len(), 8);
    let mut most = 0;
    for &(s, _) in &intervals {
        let overlapping = intervals.iter().filter(|&&(a, b)| a <= s && s < b).count();
        most = most.max(overlapping);
    }
    assert!(most <= 2, "{most} ran at once: {intervals:?}");
    assert_eq!(most, 2, "the limit is 2, not 1: {intervals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_is_retried_as_new_tasks_up_to_the_codes_retries() {
    let stack = Stack::start().await;
    let p = stack.create_project("retries").await;
    stack
        .upload_code(
            &p,
            json!({"name": "flaky", "command": "sh run.sh", "retries": 2, "retries_delay": 1}),
            &[("run.sh", "echo attempt >&2; exit 1", 0o644)],
        )
        .await;
    let first = stack
        .queue(&p, json!({"code_name": "flaky", "payload": "p"}))
        .await;
    assert_eq!(stack.wait_done(&p, &first, WITHIN).await["status"], "error");
    let until = std::time::Instant::now() + WITHIN;
    let tasks = loop {
        let r = stack.get(&p, "/tasks?code_name=flaky").await;
        let body: Value = r.json().await.unwrap();
        let tasks = body["tasks"].as_array().unwrap().clone();
        let done = tasks.iter().all(|t| t["status"] == "error");
        if tasks.len() == 3 && done {
            break tasks;
        }
        assert!(std::time::Instant::now() < until, "{tasks:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Newest first: the second retry links to the first, which links to the original.
    assert_eq!(tasks[2]["id"], first.as_str());
    assert_eq!(tasks[1]["retry_of"], first.as_str());
    assert_eq!(tasks[1]["retry_count"], 1);
    assert_eq!(tasks[0]["retry_of"], tasks[1]["id"]);
    assert_eq!(tasks[0]["retry_count"], 2);
    assert_eq!(tasks[0]["payload"], "p");
    // retries_delay: each retry starts at least a second after the task it retries ended.
    let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    assert!(
        time(&tasks[1]["start_time"]) - time(&tasks[2]["end_time"])
            >= chrono::Duration::milliseconds(900)
    );
    // No third retry appears.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let body: Value = stack
        .get(&p, "/tasks?code_name=flaky")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["tasks"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_prints_too_much_gets_a_capped_marked_log() {
    let stack = Stack::start_with(StackOptions {
        log_max_bytes: 256 * 1024,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("loud").await;
    // About 20 MiB of output; the worker must not block and the log must stop at the cap.
    stack
        .upload_script(
            &p,
            "loud",
            "yes 0123456789abcdef0123456789abcdef | head -c 20000000; echo done >&2",
        )
        .await;
    let id = stack.queue(&p, json!({"code_name": "loud"})).await;
    let task = stack.wait_done(&p, &id, WITHIN).await;
    assert_eq!(task["status"], "complete", "{task}");
    assert_eq!(task["log_size"], 256 * 1024);
    let log = stack.log(&p, &id).await;
    let mark = format!("\n[workhook: log truncated at {} bytes]\n", 256 * 1024);
    assert_eq!(log.len(), 256 * 1024 + mark.len());
    assert!(log.ends_with(mark.as_bytes()));
}

/// The envelope a runner would find on the stream for a task of the code, queued now.
fn envelope(task_id: &str, project: &Project, code_id: &str, code_name: &str) -> pb::Envelope {
    pb::Envelope {
        task_id: task_id.into(),
        project_id: project.id.clone(),
        code_id: code_id.into(),
        code_name: code_name.into(),
        code_rev: 1,
        priority: 0,
        timeout: 60,
        delay: 0,
        label: None,
        cluster: "default".into(),
        received_at: chrono::Utc::now().timestamp_millis(),
        source: "api".into(),
        retry_of: None,
        retry_count: 0,
        schedule_id: None,
        verified_by: None,
        request: None,
        payload_ref: None,
    }
}

/// The envelope of a task queued to code "w" (reading the task records it).
async fn envelope_of(stack: &Stack, project: &Project, task_id: &str) -> pb::Envelope {
    let task = stack.task(project, task_id).await;
    envelope(task_id, project, task["code_id"].as_str().unwrap(), "w")
}

/// The registry takes concurrent StartTask and FinishTask calls together, in one statement per
/// batch: each task still starts exactly once however many runners ask at the same moment, a
/// call naming another project is refused, and only the attempt that holds a task records its
/// result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_and_finishes_start_each_task_once_and_record_only_its_attempt() {
    use pb::start_task_response::Decision;
    let stack = Stack::start_with(StackOptions {
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("batches").await;
    let other = stack.create_project("elsewhere").await;
    stack.upload_script(&p, "w", "true").await;
    let mut envelopes = Vec::new();
    for i in 0..24 {
        let id = stack
            .queue(&p, json!({"code_name": "w", "payload": i.to_string()}))
            .await;
        envelopes.push(envelope_of(&stack, &p, &id).await);
    }
    let registry = stack.registry().await;
    // Three runners ask for every task at once; a fourth names the wrong project.
    let mut calls = tokio::task::JoinSet::new();
    for (i, envelope) in envelopes.iter().enumerate() {
        for runner in ["a", "b", "c", "x"] {
            let mut envelope = envelope.clone();
            if runner == "x" {
                envelope.project_id = other.id.clone();
            }
            let mut registry = registry.clone();
            calls.spawn(async move {
                let decision = registry
                    .start_task(pb::StartTaskRequest {
                        envelope: Some(envelope),
                        runner_id: runner.into(),
                        lease_ms: 30_000,
                        payload: None,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .decision
                    .unwrap();
                (i, runner, decision)
            });
        }
    }
    let mut runs = vec![Vec::new(); envelopes.len()];
    while let Some(done) = calls.join_next().await {
        let (i, runner, decision) = done.unwrap();
        match decision {
            Decision::Run(run) => {
                assert_ne!(
                    runner, "x",
                    "a call naming another project never starts a task"
                );
                assert_eq!(run.command, "sh run.sh");
                assert!(!run.task_token.is_empty());
                runs[i].push((runner, run));
            }
            Decision::Skip(_) => assert_eq!(runner, "x"),
            Decision::Defer(_) => assert_ne!(runner, "x"),
            Decision::NeedPayload(_) => panic!("every task is recorded"),
        }
    }
    for (i, r) in runs.iter().enumerate() {
        assert_eq!(r.len(), 1, "task {i} started {} times", r.len());
        assert_eq!(r[0].1.attempt, 1);
    }
    let tokens: std::collections::HashSet<_> =
        runs.iter().map(|r| r[0].1.task_token.clone()).collect();
    assert_eq!(
        tokens.len(),
        envelopes.len(),
        "every start has its own token"
    );

    // Every task completes at once, each also reported by a stale attempt and twice by its own.
    let mut finishes = tokio::task::JoinSet::new();
    for (i, envelope) in envelopes.iter().enumerate() {
        for attempt in [1, 1, 0] {
            let mut registry = registry.clone();
            let task_id = envelope.task_id.clone();
            finishes.spawn(async move {
                let done = registry
                    .finish_task(pb::FinishTaskRequest {
                        task_id,
                        attempt,
                        status: "complete".into(),
                        msg: format!("done {i}"),
                        error_class: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                (i, attempt, done)
            });
        }
    }
    let mut recorded = vec![0; envelopes.len()];
    while let Some(done) = finishes.join_next().await {
        let (i, attempt, done) = done.unwrap();
        // A report that was not recorded is told the status it met, which may still be
        // "running" when the holding attempt's report is being recorded in the same moment.
        let expected: &[&str] = if done.recorded {
            &["complete"]
        } else {
            &["running", "complete"]
        };
        assert!(expected.contains(&done.status.as_str()), "{}", done.status);
        if done.recorded {
            assert_eq!(attempt, 1, "a stale attempt's report is never recorded");
            recorded[i] += 1;
        }
    }
    // The holding attempt's report is recorded (its repeat may be too, with the same result).
    assert!(recorded.iter().all(|&n| n >= 1), "{recorded:?}");
    for (i, envelope) in envelopes.iter().enumerate() {
        let task = stack.task(&p, &envelope.task_id).await;
        assert_eq!(task["status"], "complete");
        assert_eq!(task["msg"], format!("done {i}"));
    }
    // A finish for a task that does not exist is an error, not a silent success.
    let missing = registry
        .clone()
        .finish_task(pb::FinishTaskRequest {
            task_id: "0123456789abcdef01234567".into(),
            attempt: 1,
            status: "complete".into(),
            msg: String::new(),
            error_class: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

/// A task nothing has read yet is inserted as running by the start that finds it unrecorded:
/// one version of its row, not a queued one updated at once. Several runners asking for it in
/// the same moment still start it exactly once, with the payload they carried; a task of a paused
/// code is recorded as queued and deferred, not started; a task recorded before is started by
/// its row, in the same batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrecorded_tasks_asked_for_by_several_runners_at_once_start_once_as_one_row_version() {
    use pb::start_task_response::Decision;
    use sqlx::Connection;
    let stack = Stack::start_with(StackOptions {
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("unrecorded").await;
    let code = stack.upload_script(&p, "w", "true").await;
    let held = stack.upload_script(&p, "held", "true").await;
    let held_id = held["id"].as_str().unwrap();
    let r = stack
        .post_empty(&p, &format!("/codes/{held_id}/pause_task_queue"))
        .await;
    assert_eq!(r.status(), 200);
    // Envelopes as the runners would find them on the stream; never published, so nothing
    // has read (recorded) them.
    let mut envelopes: Vec<(pb::Envelope, bool)> = (0..28)
        .map(|i| {
            let runs = i < 24;
            let (code, name) = if runs { (&code, "w") } else { (&held, "held") };
            let id = workhook_core::ids::new_id();
            let code_id = code["id"].as_str().unwrap();
            (envelope(&id, &p, code_id, name), runs)
        })
        .collect();
    // And four tasks read (so recorded as queued) before the same calls: started by row.
    for i in envelopes.len()..envelopes.len() + 4 {
        let payload = format!("payload {i}");
        let id = stack
            .queue(&p, json!({"code_name": "w", "payload": payload}))
            .await;
        envelopes.push((envelope_of(&stack, &p, &id).await, true));
    }
    let registry = stack.registry().await;
    let mut calls = tokio::task::JoinSet::new();
    for (i, (envelope, _)) in envelopes.iter().enumerate() {
        for runner in ["a", "b", "c"] {
            let mut registry = registry.clone();
            let request = pb::StartTaskRequest {
                envelope: Some(envelope.clone()),
                runner_id: runner.into(),
                lease_ms: 30_000,
                payload: Some(format!("payload {i}").into()),
            };
            calls.spawn(async move {
                let decision = registry.start_task(request).await.unwrap().into_inner();
                (i, decision.decision.unwrap())
            });
        }
    }
    let mut started = vec![0; envelopes.len()];
    while let Some(done) = calls.join_next().await {
        let (i, decision) = done.unwrap();
        match decision {
            Decision::Run(run) => {
                assert!(envelopes[i].1, "a paused code's task never starts");
                assert_eq!(run.attempt, 1);
                assert_eq!(run.command, "sh run.sh");
                started[i] += 1;
            }
            Decision::Defer(_) => {}
            other => panic!("task {i}: {other:?}"),
        }
    }
    for (i, (envelope, runs)) in envelopes.iter().enumerate() {
        assert_eq!(
            started[i],
            usize::from(*runs),
            "task {i} started {} times",
            started[i]
        );
        let task = stack.task(&p, &envelope.task_id).await;
        let status = if *runs { "running" } else { "queued" };
        assert_eq!(task["status"], status, "{task}");
        assert_eq!(task["payload"], format!("payload {i}"));
    }
    // The old way (recorded as queued, then updated to running) left a second version of each
    // started task's row, and a line pointer for each version stays in the table's pages until
    // a vacuum; an insert makes one, but for a speculative insert that lost a race with
    // another batch's (rare: at most one per task two batches asked for at once).
    let mut db = sqlx::PgConnection::connect(&stack.db.url).await.unwrap();
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pageinspect")
        .execute(&mut db)
        .await
        .unwrap();
    let (versions,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM generate_series(0, pg_relation_size('tasks') / 8192 - 1) AS page,
            heap_page_items(get_raw_page('tasks', page::int))",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    // 32 tasks: 28 inserted once, 4 recorded and then started by row (two versions each).
    let expected = envelopes.len() as i64 + 4;
    assert!(
        (expected..expected + 12).contains(&versions),
        "{versions} row versions, {expected} expected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_report_from_a_lost_attempt_cannot_overwrite_and_a_finished_task_never_reruns() {
    let stack = Stack::start_with(StackOptions {
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("guards").await;
    stack.upload_script(&p, "w", "true").await;
    let id = stack
        .queue(&p, json!({"code_name": "w", "payload": "x"}))
        .await;
    let envelope = envelope_of(&stack, &p, &id).await;
    let mut registry = stack.registry().await;
    let start = |runner: &str, lease_ms: i64| pb::StartTaskRequest {
        envelope: Some(envelope.clone()),
        runner_id: runner.into(),
        lease_ms,
        payload: None,
    };
    let decision = |r: pb::StartTaskResponse| r.decision.unwrap();
    use pb::start_task_response::Decision;

    let Decision::Run(first) = decision(
        registry
            .start_task(start("a", 1_000))
            .await
            .unwrap()
            .into_inner(),
    ) else {
        panic!("the first start runs");
    };
    assert_eq!(first.attempt, 1);
    // While a's lease lives, b is told to wait.
    let Decision::Defer(_) = decision(
        registry
            .start_task(start("b", 1_000))
            .await
            .unwrap()
            .into_inner(),
    ) else {
        panic!("a live lease defers");
    };
    // a stalls past its lease; b takes over.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let Decision::Run(second) = decision(
        registry
            .start_task(start("b", 30_000))
            .await
            .unwrap()
            .into_inner(),
    ) else {
        panic!("a lapsed lease is taken over");
    };
    assert_eq!(second.attempt, 2);
    let beat = registry
        .heartbeat(pb::HeartbeatRequest {
            task_id: id.clone(),
            attempt: 1,
            lease_ms: 30_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!beat.keep_running, "the lost attempt is told to stop");
    let finish = |attempt: i32, status: &str| pb::FinishTaskRequest {
        task_id: id.clone(),
        attempt,
        status: status.into(),
        msg: String::new(),
        error_class: String::new(),
    };
    let done = registry
        .finish_task(finish(2, "complete"))
        .await
        .unwrap()
        .into_inner();
    assert!(done.recorded);
    let late = registry
        .finish_task(finish(1, "error"))
        .await
        .unwrap()
        .into_inner();
    assert!(!late.recorded);
    assert_eq!(late.status, "complete");
    assert_eq!(stack.task(&p, &id).await["status"], "complete");
    // A redelivery of the finished task is skipped.
    let Decision::Skip(skip) = decision(
        registry
            .start_task(start("c", 1_000))
            .await
            .unwrap()
            .into_inner(),
    ) else {
        panic!("a finished task is never run again");
    };
    assert_eq!(skip.reason, "complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reports_progress_with_a_token_scoped_to_its_task() {
    let stack = Stack::start().await;
    let p = stack.create_project("progress").await;
    let other = stack.create_project("other").await;
    stack.upload_script(&other, "w", "true").await;
    let foreign = stack.queue(&other, json!({"code_name": "w"})).await;
    // The worker calls the API with what its environment holds; its token reaches nothing else.
    let script = r#"
api="$WORKHOOK_API_URL/2/projects/$WORKHOOK_PROJECT_ID/tasks"
auth="Authorization: OAuth $WORKHOOK_TASK_TOKEN"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "$auth" -H 'Content-Type: application/json' \
  -d '{"percent":50,"msg":"half way"}' "$api/$TASK_ID/progress")
echo "progress $code"
echo "read $(curl -s -o /dev/null -w '%{http_code}' -H "$auth" "$api/$TASK_ID")"
echo "list $(curl -s -o /dev/null -w '%{http_code}' -H "$auth" "$api")"
set -- $(cat "$PAYLOAD_FILE")
echo "foreign $(curl -s -o /dev/null -w '%{http_code}' -X POST -H "$auth" -H 'Content-Type: application/json' \
  -d '{"percent":1}' "$WORKHOOK_API_URL/2/projects/$1/tasks/$2/progress")"
sleep 2
"#;
    stack.upload_script(&p, "reporter", script).await;
    let id = stack
        .queue(
            &p,
            json!({"code_name": "reporter", "payload": format!("{} {foreign}", other.id)}),
        )
        .await;
    let until = std::time::Instant::now() + WITHIN;
    loop {
        let task = stack.task(&p, &id).await;
        if task["percent"] == 50 {
            assert_eq!(task["msg"], "half way");
            assert_eq!(task["status"], "running");
            break;
        }
        assert!(std::time::Instant::now() < until, "no progress: {task}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let task = stack.wait_done(&p, &id, WITHIN).await;
    assert_eq!(task["status"], "complete");
    assert_eq!(task["percent"], 100);
    let log = String::from_utf8(stack.log(&p, &id).await.to_vec()).unwrap();
    assert_eq!(log, "progress 200\nread 401\nlist 401\nforeign 401\n");
    assert_eq!(
        stack.wait_done(&other, &foreign, WITHIN).await["percent"],
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_task_holds_nothing_while_it_waits_survives_restarts_and_starts_on_time() {
    let mut stack = Stack::start().await;
    let p = stack.create_project("delayed").await;
    stack.upload_script(&p, "now", "date +%s%3N").await;
    let queued_at = chrono::Utc::now().timestamp_millis();
    let id = stack
        .queue(&p, json!({"code_name": "now", "delay": 4, "priority": 2}))
        .await;
    // While it waits, no runner consumer holds it (pending or delivered) and no slot runs it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let stream_name = format!("{}_TASKS", stack.prefix.to_uppercase());
    let stream = js.get_stream(&stream_name).await.unwrap();
    for priority in [2u8, 1, 0] {
        let consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .get_consumer(&workhook_core::stream::runner_consumer(priority))
            .await
            .unwrap();
        let info = consumer.get_info().await.unwrap();
        assert_eq!(
            (info.num_pending, info.num_ack_pending),
            (0, 0),
            "p{priority}"
        );
    }
    assert_eq!(stack.task(&p, &id).await["status"], "queued");
    // Every component restarts meanwhile.
    stack.stop_registry().await.unwrap();
    stack.stop_runner(0).await.unwrap();
    stack.start_registry_again().await;
    stack.add_runner();
    let task = stack.wait_done(&p, &id, WITHIN).await;
    assert_eq!(task["status"], "complete", "{task}");
    let ran_at: i64 = String::from_utf8_lossy(&stack.log(&p, &id).await)
        .trim()
        .parse()
        .unwrap();
    let late = ran_at - (queued_at + 4_000);
    eprintln!("started {late} ms after its time");
    assert!(
        (0..1_000).contains(&late),
        "started {late} ms after its time"
    );
}
