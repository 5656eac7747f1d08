//! Leases: a long task is never taken over while its runner lives; a runner that dies loses
//! its task to another once the lease lapses, and the task still finishes.

use std::time::Duration;

use serde_json::json;
use workhook_tests::{RunCounter, Stack, StackOptions};

const WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_longer_than_its_lease_runs_once_while_its_runner_lives() {
    let stack = Stack::start_with(StackOptions {
        runners: 2,
        lease_secs: 3,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("long").await;
    let runs = RunCounter::new();
    stack
        .upload_script(
            &p,
            "long",
            r#"echo run >> "$(cat "$PAYLOAD_FILE")"; sleep 7"#,
        )
        .await;
    let id = stack
        .queue(
            &p,
            json!({"code_name": "long", "payload": runs.path().to_str().unwrap()}),
        )
        .await;
    let task = stack.wait_done(&p, &id, WITHIN).await;
    assert_eq!(task["status"], "complete", "{task}");
    // Past two lease periods, and still one run.
    assert_eq!(runs.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_loses_its_task_to_another_after_the_lease() {
    let mut stack = Stack::start_with(StackOptions {
        runners: 1,
        lease_secs: 3,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("takeover").await;
    let runs = RunCounter::new();
    // The first run hangs; the second finishes.
    stack
        .upload_script(
            &p,
            "w",
            r#"f="$(cat "$PAYLOAD_FILE")"; echo run >> "$f"; [ "$(wc -l < "$f")" -ge 2 ] || sleep 300; echo done"#,
        )
        .await;
    let id = stack
        .queue(
            &p,
            json!({"code_name": "w", "payload": runs.path().to_str().unwrap()}),
        )
        .await;
    stack.wait_status(&p, &id, "running", WITHIN).await;
    while runs.count() < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.kill_runner(0);
    stack.add_runner();
    let task = stack.wait_done(&p, &id, WITHIN).await;
    assert_eq!(task["status"], "complete", "{task}");
    assert_eq!(runs.count(), 2);
    assert_eq!(
        &stack.log(&p, &id).await[..],
        b"done\n",
        "the log is the last attempt's"
    );
}
