//! When NATS is gone, a webhook is refused with 503, never acknowledged.

use std::time::{Duration, Instant};

use serde_json::Value;
use workhook_tests::{accepted_id, RunCounter, Stack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_stopped_a_webhook_answers_503_not_200() {
    let mut stack = Stack::start_with(StackOptions {
        publish_timeout_ms: 1_000,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("down").await;
    stack.upload_script(&p, "w", "true").await;
    // Warm the caches, so the refusal below is the broker's and not the registry's.
    assert_eq!(stack.webhook(&p, "w", "warm").await.status(), 200);

    stack.nats.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let r = stack.webhook(&p, "w", "lost?").await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "1");
        let body: Value = r.json().await.unwrap();
        assert!(body["msg"].as_str().unwrap().contains("retry"), "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "answered after {:?}",
            started.elapsed()
        );
    }
    let r = stack.client.get(stack.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);

    // NATS comes back (same store): the ingress and the runner reconnect by themselves, and a
    // webhook is accepted and run again.
    stack.nats.start_again();
    let until = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let r = stack.webhook(&p, "w", "back").await;
        if r.status() == 200 {
            break r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
        }
        assert_eq!(r.status(), 503);
        assert!(Instant::now() < until, "the ingress never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let task = stack.wait_done(&p, &id, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "complete");
    let r = stack.client.get(stack.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_while_a_task_runs_loses_nothing() {
    let mut stack = Stack::start().await;
    let p = stack.create_project("restart").await;
    let runs = RunCounter::new();
    stack
        .upload_script(&p, "w", &format!("{}; sleep 2; echo done", runs.mark()))
        .await;
    let running = stack.queue(&p, serde_json::json!({"code_name": "w"})).await;
    stack
        .wait_status(&p, &running, "running", Duration::from_secs(30))
        .await;
    // Acknowledged but not yet started: must survive the restart too.
    let queued: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..5 {
            let r = stack.webhook(&p, "w", "x").await;
            ids.push(accepted_id(r).await);
        }
        ids
    };
    stack.nats.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.nats.start_again();
    for id in std::iter::once(&running).chain(&queued) {
        let task = stack.wait_done(&p, id, Duration::from_secs(60)).await;
        assert_eq!(task["status"], "complete", "{task}");
    }
    assert_eq!(runs.count(), 6, "every task ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_restart_while_tasks_run_loses_nothing() {
    let mut stack = Stack::start().await;
    let p = stack.create_project("registry").await;
    let runs = RunCounter::new();
    stack
        .upload_script(&p, "w", &format!("{}; sleep 2; echo done", runs.mark()))
        .await;
    let running = stack.queue(&p, serde_json::json!({"code_name": "w"})).await;
    stack
        .wait_status(&p, &running, "running", Duration::from_secs(30))
        .await;
    stack.stop_registry().await.unwrap();
    // While it is away, webhooks keep being accepted: the ingress falls back on the token check
    // and code lookup it made recently, and only needs JetStream.
    tokio::time::sleep(Duration::from_secs(6)).await; // past the caches' 5 s TTL
    let mut queued = Vec::new();
    for _ in 0..3 {
        let r = stack.webhook(&p, "w", "x").await;
        let status = r.status();
        let r = r.text().await.unwrap();
        assert_eq!(status, 200, "{r}");
        let r: Value = serde_json::from_str(&r).unwrap();
        queued.push(r["id"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.start_registry_again().await;
    for id in std::iter::once(&running).chain(&queued) {
        let task = stack.wait_done(&p, id, Duration::from_secs(60)).await;
        assert_eq!(task["status"], "complete", "{task}");
        assert_eq!(&stack.log(&p, id).await[..], b"done\n");
    }
    assert_eq!(runs.count(), 4, "every task ran once");
}
