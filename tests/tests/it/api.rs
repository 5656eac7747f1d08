//! The API's refusals and guarantees: auth, tenancy, not-found, limits, and that an id it has
//! just returned is never 404.

use serde_json::{json, Value};
use workhook_tests::{accepted_id, Stack, StackOptions};

async fn msg(r: reqwest::Response) -> String {
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body: Value = r.json().await.unwrap();
    body["msg"].as_str().expect("a msg").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_codes_bad_tokens_and_other_projects_are_refused() {
    let stack = Stack::start().await;
    let a = stack.create_project("a").await;
    let b = stack.create_project("b").await;
    stack.upload_script(&b, "w", "echo hi").await;

    // Unknown code.
    let r = stack.webhook(&a, "nope", "x").await;
    assert_eq!(r.status(), 404);
    assert_eq!(msg(r).await, "Code not found");

    // A bad token, and no token at all.
    let forged = workhook_tests::Project {
        id: a.id.clone(),
        token: "0".repeat(64),
    };
    let r = stack.webhook(&forged, "w", "x").await;
    assert_eq!(r.status(), 401);
    assert_eq!(msg(r).await, "Unauthorized");
    let r = stack
        .client
        .get(stack.url(&format!("/2/projects/{}/codes", a.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // B's task exists; A's token reaches neither B's project nor B's task through A's project.
    let r = stack.webhook(&b, "w", "x").await;
    let id = accepted_id(r).await;
    stack.task(&b, &id).await;
    let r = stack
        .client
        .get(stack.url(&format!("/2/projects/{}/tasks/{id}", b.id)))
        .header("Authorization", format!("OAuth {}", a.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = stack.get(&a, &format!("/tasks/{id}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(msg(r).await, "Task not found");
    let r = stack.get(&a, &format!("/tasks/{id}/log")).await;
    assert_eq!(r.status(), 404);
    // A's code of the same name does not exist either.
    let r = stack.webhook(&a, "w", "x").await;
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_just_queued_task_is_never_404() {
    let stack = Stack::start().await;
    let p = stack.create_project("fresh").await;
    stack.upload_script(&p, "w", "true").await;
    for i in 0..60 {
        let r = stack.webhook(&p, "w", format!("{i}")).await;
        let id = accepted_id(r).await;
        let r = stack.get(&p, &format!("/tasks/{id}")).await;
        assert_eq!(
            r.status(),
            200,
            "task {id} ({i}) was not found right after queueing"
        );
        let task: Value = r.json().await.unwrap();
        assert_eq!(task["payload"], format!("{i}"));
    }
    // And the JSON API's ids too, many at once.
    let tasks: Vec<Value> = (0..20)
        .map(|i| json!({"code_name": "w", "payload": format!("{i}")}))
        .collect();
    let r = stack
        .client
        .post(stack.url(&format!("/2/projects/{}/tasks", p.id)))
        .header("Authorization", format!("OAuth {}", p.token))
        .json(&json!({ "tasks": tasks }))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["msg"], "Queued up");
    for t in body["tasks"].as_array().unwrap() {
        let r = stack
            .get(&p, &format!("/tasks/{}", t["id"].as_str().unwrap()))
            .await;
        assert_eq!(r.status(), 200);
    }
    // A well-formed id nobody issued is a 404, answered without a long wait.
    let started = std::time::Instant::now();
    let r = stack.get(&p, &format!("/tasks/{}", "0".repeat(24))).await;
    assert_eq!(r.status(), 404);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_statuses() {
    let stack = Stack::start_with(StackOptions {
        max_body_bytes: 64 * 1024,
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("limits").await;
    stack.upload_script(&p, "w", "true").await;

    // Over the body limit, by Content-Length and chunked: 413, never truncation.
    let big = vec![b'x'; 64 * 1024 + 1];
    let r = stack.webhook(&p, "w", big.clone()).await;
    assert_eq!(r.status(), 413);
    msg(r).await;
    let chunks = futures_util::stream::iter(
        big.chunks(4096)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let r = stack
        .webhook(&p, "w", reqwest::Body::wrap_stream(chunks))
        .await;
    assert_eq!(r.status(), 413);
    // Exactly at the limit is fine.
    let r = stack.webhook(&p, "w", vec![b'x'; 64 * 1024]).await;
    assert_eq!(r.status(), 200);

    // The JSON API wants its content type, and valid fields.
    let r = stack
        .client
        .post(stack.url(&format!("/2/projects/{}/tasks", p.id)))
        .header("Authorization", format!("OAuth {}", p.token))
        .body(r#"{"tasks":[{"code_name":"w"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
    msg(r).await;
    for (task, status) in [
        (json!({"code_name": "w", "priority": 3}), 400),
        (json!({"code_name": "w", "timeout": 3601}), 400),
        (json!({"code_name": "w", "delay": 604_801}), 400),
        (json!({"payload": "no code"}), 400),
        (json!({"code_name": "missing"}), 404),
    ] {
        let r = stack
            .client
            .post(stack.url(&format!("/2/projects/{}/tasks", p.id)))
            .header("Authorization", format!("OAuth {}", p.token))
            .json(&json!({ "tasks": [task] }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{task}");
        msg(r).await;
    }
    let r = stack
        .client
        .post(stack.url(&format!(
            "/2/projects/{}/tasks/webhook?code_name=w&oauth={}&priority=9",
            p.id, p.token
        )))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Unknown routes and methods answer in JSON too.
    let r = stack.client.get(stack.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    msg(r).await;
    let r = stack
        .client
        .delete(stack.url(&format!("/2/projects/{}/tasks", p.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    msg(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_are_listed_with_their_revisions() {
    let stack = Stack::start_with(StackOptions {
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("codes").await;
    let first = stack.upload_script(&p, "w", "echo 1").await;
    let second = stack.upload_script(&p, "w", "echo 2").await;
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["rev"], 2);
    // The official clients' legacy fields, without a command.
    stack
        .upload_code(
            &p,
            json!({"name": "py", "runtime": "python", "file_name": "hello.py"}),
            &[("hello.py", "print('hi')", 0o644)],
        )
        .await;
    let r = stack.get(&p, "/codes").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let codes = body["codes"].as_array().unwrap();
    assert_eq!(codes.len(), 2);
    assert_eq!(codes[0]["name"], "w");
    assert_eq!(codes[0]["rev"], 2);
    assert_eq!(codes[1]["command"], "python3 hello.py");
    assert_eq!(codes[1]["latest_checksum"].as_str().unwrap().len(), 64);
    let r = stack.get(&p, "/codes?per_page=1&page=1").await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["codes"][0]["name"], "py");
}
