//! When NATS is gone, a webhook is refused with 503, never acknowledged.

use std::time::{Duration, Instant};

use serde_json::Value;
use workhook_tests::{Stack, StackOptions};

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
}
