//! Every service serves Prometheus metrics on its admin listener, and the series move as a
//! task runs.

use std::time::Duration;

use workhook_tests::{accepted_id, Stack};

async fn scrape(stack: &Stack, base: &str) -> String {
    let r = stack
        .client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of the first sample line starting with `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_services_metrics_move_as_a_task_runs() {
    let stack = Stack::start().await;
    let p = stack.create_project("metrics").await;
    stack.upload_script(&p, "w", "echo hi").await;
    let runner = stack.runner_admins[0].clone();

    for base in [&stack.ingress_admin, &stack.registry_admin, &runner] {
        for path in ["/healthz", "/readyz"] {
            let r = stack
                .client
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{base}{path}");
        }
    }
    // Not on the public port.
    let r = stack
        .client
        .get(stack.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // The accepted series exists from the start, at 0, so a rate over it starts with the first
    // webhook rather than one scrape later.
    let before = scrape(&stack, &stack.ingress_admin).await;
    assert_eq!(
        value(&before, "workhook_webhooks_total{outcome=\"accepted\"}"),
        Some(0.0)
    );
    let r = stack.webhook(&p, "w", "x").await;
    let id = accepted_id(r).await;
    assert_eq!(stack.webhook(&p, "nope", "x").await.status(), 404);
    stack.wait_done(&p, &id, Duration::from_secs(30)).await;

    let ingress = scrape(&stack, &stack.ingress_admin).await;
    assert_eq!(
        value(&ingress, "workhook_webhooks_total{outcome=\"accepted\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&ingress, "workhook_webhooks_total{outcome=\"not_found\"}"),
        Some(1.0)
    );
    assert_eq!(value(&ingress, "workhook_publish_seconds_count"), Some(1.0));

    let runner_text = scrape(&stack, &runner).await;
    assert_eq!(
        value(
            &runner_text,
            "workhook_tasks_finished_total{code=\"w\",status=\"complete\"}"
        ),
        Some(1.0),
        "{runner_text}"
    );
    assert_eq!(
        value(
            &runner_text,
            "workhook_task_duration_seconds_count{code=\"w\"}"
        ),
        Some(1.0)
    );
    assert_eq!(value(&runner_text, "workhook_runner_slots_busy"), Some(0.0));

    // A delayed task is recorded as it arrives (other queued tasks, only when read or started).
    stack
        .queue(&p, serde_json::json!({"code_name": "w", "delay": 600}))
        .await;
    // The registry samples backlogs every 2 s.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let registry = scrape(&stack, &stack.registry_admin).await;
    assert!(
        value(&registry, "workhook_recorded_tasks_total").unwrap() >= 1.0,
        "{registry}"
    );
    assert!(
        value(
            &registry,
            "workhook_grpc_request_seconds_count{method=\"StartTask\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        value(
            &registry,
            "workhook_grpc_request_seconds_count{method=\"FinishTask\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        value(&registry, "workhook_queue_depth{priority=\"0\"}"),
        Some(0.0)
    );
    assert_eq!(value(&registry, "workhook_recorder_lag"), Some(0.0));
    assert!(value(&registry, "workhook_db_pool_connections{state=\"idle\"}").is_some());
}
