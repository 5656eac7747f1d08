//! Postgres trouble: the registry's connections are ended under it (as a Postgres restart or a
//! failover ends them) while tasks are queued, started and finished.

use std::time::{Duration, Instant};

use serde_json::Value;
use workhook_tests::{accepted_id, Project, RunCounter, Stack};

const WITHIN: Duration = Duration::from_secs(60);

/// Polls a task until it is finished. The registry may answer 503 (retry) while its pool
/// replaces dead connections; any other failure fails the test.
async fn finished(stack: &Stack, p: &Project, id: &str) -> Value {
    let until = Instant::now() + WITHIN;
    loop {
        let r = stack.get(p, &format!("/tasks/{id}")).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        match status.as_u16() {
            200 => match body["status"].as_str().unwrap() {
                "queued" | "preparing" | "running" => {}
                _ => return body,
            },
            503 => assert!(body["msg"].is_string(), "503 without a msg: {body}"),
            other => panic!("GET task {id}: {other} {body}"),
        }
        assert!(Instant::now() < until, "task {id} did not finish: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_queued_while_postgres_ends_the_registrys_connections_all_run() {
    let stack = Stack::start().await;
    let p = stack.create_project("pg").await;
    let runs = RunCounter::new();
    stack
        .upload_script(
            &p,
            "hello",
            &format!("{}; cat \"$PAYLOAD_FILE\"", runs.mark()),
        )
        .await;
    // The pool holds connections that were just used, the kind that is handed out unchecked.
    let first = accepted_id(stack.webhook(&p, "hello", "first").await).await;
    assert_eq!(finished(&stack, &p, &first).await["status"], "complete");

    let mut ids = vec![first];
    for round in 0..3 {
        let ended = stack.db.drop_connections().await;
        assert!(ended > 0, "round {round}: the registry held no connection");
        // A lookup may be the first call to meet a dead connection: that one answers 503 (retry),
        // and from then on the pool checks its connections, so the next one is answered.
        let path = format!("/tasks/{}", ids[0]);
        let answer = stack.get(&p, &path).await.status();
        assert!(answer == 200 || answer == 503, "round {round}: {answer}");
        assert_eq!(stack.get(&p, &path).await.status(), 200, "round {round}");
        // Webhooks are answered from the stream (the token and the code are cached): every one
        // is accepted while the registry's pool recovers.
        for i in 0..5 {
            let r = stack
                .webhook(&p, "hello", format!("round {round} webhook {i}"))
                .await;
            ids.push(accepted_id(r).await);
        }
    }
    for id in &ids {
        let task = finished(&stack, &p, id).await;
        assert_eq!(task["status"], "complete", "{task}");
    }
    // Each ran once, with its own payload.
    assert_eq!(runs.count(), ids.len(), "every task ran once");
    for id in &ids[1..] {
        let log = stack.log(&p, id).await;
        assert!(
            std::str::from_utf8(&log).unwrap().starts_with("round "),
            "{id}: {log:?}"
        );
    }
}
