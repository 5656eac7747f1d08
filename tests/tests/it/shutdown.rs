//! Graceful shutdown (what SIGTERM does in `main`): each service drains without losing a task.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use workhook_tests::{accepted_id, RunCounter, Stack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_runner_finishes_its_running_task_and_takes_no_more() {
    let mut stack = Stack::start().await;
    let p = stack.create_project("drain").await;
    stack.upload_script(&p, "w", "sleep 1; echo finished").await;
    let id = stack.queue(&p, json!({"code_name": "w"})).await;
    stack
        .wait_status(&p, &id, "running", Duration::from_secs(30))
        .await;
    let stopping = Instant::now();
    stack.stop_runner(0).await.unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(5));
    // It finished and reported before the runner's `run` returned.
    let task = stack.task(&p, &id).await;
    assert_eq!(task["status"], "complete", "{task}");
    assert_eq!(&stack.log(&p, &id).await[..], b"finished\n");
    // A task queued now waits for another runner, and runs there.
    let later = stack.queue(&p, json!({"code_name": "w"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.task(&p, &later).await["status"], "queued");
    stack.add_runner();
    let task = stack.wait_done(&p, &later, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_past_its_drain_deadline_hands_its_task_back() {
    // A 30 s lease: the task is taken over at once because it is handed back, not because its
    // lease lapsed.
    let mut stack = Stack::start().await;
    let p = stack.create_project("handback").await;
    let runs = RunCounter::new();
    // The first run outlasts the drain deadline (5 s in the suite); the second is quick.
    stack
        .upload_script(
            &p,
            "w",
            &format!(
                r#"echo run >> {0}; [ "$(wc -l < {0})" -ge 2 ] || sleep 300; echo done"#,
                runs.path().display()
            ),
        )
        .await;
    let id = stack.queue(&p, json!({"code_name": "w"})).await;
    stack
        .wait_status(&p, &id, "running", Duration::from_secs(30))
        .await;
    stack.add_runner();
    let stopping = Instant::now();
    stack.stop_runner(0).await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(12),
        "{:?}",
        stopping.elapsed()
    );
    let task = stack.wait_done(&p, &id, Duration::from_secs(10)).await;
    assert_eq!(task["status"], "complete", "{task}");
    assert_eq!(runs.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_ingress_answers_the_webhook_it_is_reading_and_then_refuses() {
    let mut stack = Stack::start().await;
    let p = stack.create_project("ingress").await;
    stack.upload_script(&p, "w", r#"cat "$PAYLOAD_FILE""#).await;
    // A webhook whose body is still arriving when shutdown starts.
    let url = stack.url(&format!(
        "/2/projects/{}/tasks/webhook?code_name=w&oauth={}",
        p.id, p.token
    ));
    let client = stack.client.clone();
    let slow = tokio::spawn(async move {
        let chunks = futures_util::stream::unfold(0, |n| async move {
            match n {
                0 => Some((Ok::<_, std::io::Error>(b"half ".to_vec()), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    Some((Ok(b"and the rest".to_vec()), 2))
                }
                _ => None,
            }
        });
        client
            .post(url)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.stop_ingress().await.unwrap();
    let answer = slow.await.unwrap().unwrap();
    let id = accepted_id(answer).await;
    // The ingress is gone; the task it acknowledged is not.
    assert!(stack
        .client
        .get(stack.url("/healthz"))
        .send()
        .await
        .is_err());
    let mut registry = stack.registry().await;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let task = registry
            .get_task(workhook_proto::GetTaskRequest {
                project_id: p.id.clone(),
                task_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if task.status == "complete" {
            break;
        }
        assert!(Instant::now() < until, "{task:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_queued_before_a_registry_restart_are_found_after_it() {
    let mut stack = Stack::start_with(StackOptions {
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("registry").await;
    stack.upload_script(&p, "w", "true").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = stack.webhook(&p, "w", format!("{i}")).await;
        ids.push(accepted_id(r).await);
    }
    stack.stop_registry().await.unwrap();
    stack.start_registry_again().await;
    for id in &ids {
        let r = stack.get(&p, &format!("/tasks/{id}")).await;
        assert_eq!(r.status(), 200, "task {id} after the restart");
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "queued");
    }
}
