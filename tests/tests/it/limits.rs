//! Bursts meet limits that answer at once: per-project rate limits (429), load shedding and
//! request deadlines (503), each with Retry-After.

use std::time::{Duration, Instant};

use serde_json::Value;
use workhook_tests::{Project, Stack, StackOptions};

/// A body that sends one byte, then waits `pause` before the rest.
fn slow_body(pause: Duration) -> reqwest::Body {
    let chunks = futures_util::stream::unfold(0, move |n| async move {
        match n {
            0 => Some((Ok::<_, std::io::Error>(b"{".to_vec()), 1)),
            1 => {
                tokio::time::sleep(pause).await;
                Some((Ok(b"}".to_vec()), 2))
            }
            _ => None,
        }
    });
    reqwest::Body::wrap_stream(chunks)
}

async fn refusal(r: reqwest::Response, status: u16) -> u64 {
    assert_eq!(r.status(), status);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = r.json().await.unwrap();
    assert!(body["msg"].as_str().unwrap().contains("retry"), "{body}");
    retry_after
}

async fn project_with_code(stack: &Stack, name: &str) -> Project {
    let p = stack.create_project(name).await;
    stack.upload_script(&p, "w", "true").await;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_over_its_rate_gets_429_and_others_do_not() {
    let stack = Stack::start_with(StackOptions {
        rate_limit: 2.0,
        runners: 0,
        ..Default::default()
    })
    .await;
    let a = project_with_code(&stack, "a").await;
    let b = project_with_code(&stack, "b").await;
    assert_eq!(stack.webhook(&a, "w", "1").await.status(), 200);
    assert_eq!(stack.webhook(&a, "w", "2").await.status(), 200);
    refusal(stack.webhook(&a, "w", "3").await, 429).await;
    assert_eq!(stack.webhook(&b, "w", "1").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(stack.webhook(&a, "w", "4").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_bound_requests_are_shed_at_once() {
    let stack = Stack::start_with(StackOptions {
        max_in_flight: 1,
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = project_with_code(&stack, "busy").await;
    let url = stack.url(&format!(
        "/2/projects/{}/tasks/webhook?code_name=w&oauth={}",
        p.id, p.token
    ));
    let client = stack.client.clone();
    let slow = tokio::spawn(async move {
        client
            .post(url)
            .body(slow_body(Duration::from_millis(1_500)))
            .send()
            .await
            .unwrap()
            .status()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    refusal(stack.webhook(&p, "w", "x").await, 503).await;
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(stack.webhook(&p, "w", "x").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_is_answered_503_not_left_hanging() {
    let stack = Stack::start_with(StackOptions {
        request_timeout_ms: 500,
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = project_with_code(&stack, "slow").await;
    let started = Instant::now();
    let r = stack
        .client
        .post(stack.url(&format!(
            "/2/projects/{}/tasks/webhook?code_name=w&oauth={}",
            p.id, p.token
        )))
        .body(slow_body(Duration::from_secs(3)))
        .send()
        .await
        .unwrap();
    refusal(r, 503).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1_500),
        "answered after {took:?}"
    );
}
