//! Webhooks as third parties send them: signed, redelivered, with headers the worker reads.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use workhook_tests::{accepted_id, Project, RunCounter, Stack, StackOptions};

const WITHIN: Duration = Duration::from_secs(30);
const SECRET: &str = "It's a Secret to Everybody";

fn github_signature(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post(
    stack: &Stack,
    p: &Project,
    code: &str,
    body: &'static str,
    headers: &[(&str, String)],
) -> reqwest::Response {
    let mut r = stack.client.post(stack.url(&format!(
        "/2/projects/{}/tasks/webhook?code_name={code}&oauth={}&label=gh",
        p.id, p.token
    )));
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_code_takes_only_correctly_signed_webhooks_and_never_shows_its_secret() {
    let stack = Stack::start().await;
    let p = stack.create_project("signed").await;
    let code = stack
        .upload_code(
            &p,
            json!({"name": "gh", "command": "sh run.sh",
                   "webhook_verify": {"scheme": "github", "secret": SECRET}}),
            &[("run.sh", r#"cat "$PAYLOAD_FILE""#, 0o644)],
        )
        .await;
    let body = r#"{"zen":"Keep it logically awesome."}"#;
    let r = post(
        &stack,
        &p,
        "gh",
        body,
        &[("X-Hub-Signature-256", github_signature(body.as_bytes()))],
    )
    .await;
    let id = accepted_id(r).await;
    let task = stack.wait_done(&p, &id, WITHIN).await;
    assert_eq!(task["status"], "complete");
    assert_eq!(task["verified_by"], "github");
    assert_eq!(&stack.log(&p, &id).await[..], body.as_bytes());

    // A wrong signature, a tampered body, no signature: 401 with no detail, nothing queued.
    for headers in [
        vec![("X-Hub-Signature-256", github_signature(b"something else"))],
        vec![("X-Hub-Signature-256", "sha256=00".to_string())],
        vec![],
    ] {
        let r = post(&stack, &p, "gh", body, &headers).await;
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"msg": "Unauthorized"})
        );
    }
    let list: Value = stack.get(&p, "/tasks").await.json().await.unwrap();
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1);

    // The secret appears in no answer.
    let code_id = code["id"].as_str().unwrap();
    for path in [
        "/codes".to_string(),
        format!("/codes/{code_id}"),
        format!("/codes/{code_id}/revisions"),
    ] {
        let text = stack.get(&p, &path).await.text().await.unwrap();
        assert!(!text.contains("Secret to Everybody"), "{path}: {text}");
    }

    // A scheme that does not exist is refused at upload, not at the first webhook.
    let form = reqwest::multipart::Form::new().text(
        "data",
        json!({"name": "bad", "command": "true", "webhook_verify": {"scheme": "gihtub", "secret": "x"}}).to_string(),
    );
    let r = stack
        .client
        .post(stack.url(&format!("/2/projects/{}/codes", p.id)))
        .header("Authorization", format!("OAuth {}", p.token))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_webhook_is_the_same_task_and_runs_once_inside_and_beyond_the_window() {
    let stack = Stack::start_with(StackOptions {
        duplicate_window_secs: 1,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("dedup").await;
    let runs = RunCounter::new();
    stack.upload_script(&p, "w", &runs.mark()).await;
    let send = |delivery: &'static str, header: &'static str| {
        let stack = &stack;
        let p = &p;
        async move {
            let r = post(stack, p, "w", "{}", &[(header, delivery.to_string())]).await;
            accepted_id(r).await
        }
    };
    // Inside JetStream's duplicate window.
    let first = send("72d3162e-cc78-11e3-81ab-4c9367dc0958", "X-GitHub-Delivery").await;
    let again = send("72d3162e-cc78-11e3-81ab-4c9367dc0958", "X-GitHub-Delivery").await;
    assert_eq!(first, again);
    stack.wait_done(&p, &first, WITHIN).await;
    // Beyond it (the window is 1 s here): still the same task, not run again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let late = send("72d3162e-cc78-11e3-81ab-4c9367dc0958", "X-GitHub-Delivery").await;
    assert_eq!(late, first);
    // IronMQ push queues redeliver with the same Iron-Message-Id.
    let mq = send("6086418525939181060", "Iron-Message-Id").await;
    assert_eq!(send("6086418525939181060", "Iron-Message-Id").await, mq);
    let other = send("6086418525939181061", "Iron-Message-Id").await;
    assert_ne!(other, mq);
    stack.wait_done(&p, &mq, WITHIN).await;
    stack.wait_done(&p, &other, WITHIN).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(runs.count(), 3, "each delivery ran exactly once");
    let list: Value = stack.get(&p, "/tasks").await.json().await.unwrap();
    assert_eq!(list["tasks"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_sees_the_request_headers_but_no_credentials() {
    let stack = Stack::start().await;
    let p = stack.create_project("headers").await;
    stack
        .upload_script(&p, "w", r#"cat "$WORKHOOK_REQUEST_FILE""#)
        .await;
    let r = post(
        &stack,
        &p,
        "w",
        "a=1&b=2",
        &[
            ("X-GitHub-Event", "push".into()),
            ("Content-Type", "application/x-www-form-urlencoded".into()),
            ("Cookie", "session=secret".into()),
        ],
    )
    .await;
    let id = accepted_id(r).await;
    assert_eq!(stack.wait_done(&p, &id, WITHIN).await["status"], "complete");
    let request: Value = serde_json::from_slice(&stack.log(&p, &id).await).unwrap();
    assert_eq!(request["method"], "POST");
    assert_eq!(request["headers"]["x-github-event"], "push");
    assert_eq!(request["content_type"], "application/x-www-form-urlencoded");
    assert_eq!(request["query"], "code_name=w&label=gh");
    let text = request.to_string();
    assert!(!text.contains(&p.token), "the token leaked: {text}");
    assert!(!text.contains("session=secret"), "a cookie leaked: {text}");
    assert!(request["headers"].get("authorization").is_none());

    // A delayed task is published again from Postgres when it is due: the request goes with it.
    let r = post(
        &stack,
        &p,
        "w&delay=1",
        "{}",
        &[("X-GitHub-Event", "ping".into())],
    )
    .await;
    let id = accepted_id(r).await;
    assert_eq!(stack.wait_done(&p, &id, WITHIN).await["status"], "complete");
    let request: Value = serde_json::from_slice(&stack.log(&p, &id).await).unwrap();
    assert_eq!(request["headers"]["x-github-event"], "ping");
    assert_eq!(request["query"], "code_name=w&delay=1&label=gh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_token_queues_only_its_codes_tasks_and_can_be_revoked() {
    let stack = Stack::start_with(StackOptions {
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("scoped").await;
    let hooked = stack.upload_script(&p, "hooked", "true").await;
    stack.upload_script(&p, "other", "true").await;
    let code_id = hooked["id"].as_str().unwrap();
    let r = stack
        .client
        .post(stack.url(&format!(
            "/2/projects/{}/codes/{code_id}/webhook_tokens",
            p.id
        )))
        .header("Authorization", format!("OAuth {}", p.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let minted: Value = r.json().await.unwrap();
    let token = minted["token"].as_str().unwrap().to_string();
    let path = minted["webhook_path"].as_str().unwrap().to_string();
    assert!(path.ends_with(&format!("oauth={token}")), "{path}");
    let scoped = Project {
        id: p.id.clone(),
        token: token.clone(),
    };

    // Its code's webhook: yes.
    let r = stack
        .client
        .post(stack.url(&path))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Another code's webhook, the JSON API, reading tasks or codes: no.
    assert_eq!(stack.webhook(&scoped, "other", "x").await.status(), 401);
    assert_eq!(stack.get(&scoped, "/tasks").await.status(), 401);
    assert_eq!(stack.get(&scoped, "/codes").await.status(), 401);
    let r = stack
        .client
        .post(stack.url(&format!("/2/projects/{}/tasks", p.id)))
        .header("Authorization", format!("OAuth {token}"))
        .json(&json!({"tasks": [{"code_name": "hooked"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The project token still works in ?oauth= (compatibility).
    assert_eq!(stack.webhook(&p, "hooked", "x").await.status(), 200);

    // Listed per code (without the secret), and revocable.
    let list: Value = stack
        .get(&p, &format!("/codes/{code_id}/webhook_tokens"))
        .await
        .json()
        .await
        .unwrap();
    let listed = list["webhook_tokens"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], minted["id"]);
    assert!(!list.to_string().contains(&token));
    let r = stack
        .client
        .delete(stack.url(&format!(
            "/2/projects/{}/codes/{code_id}/webhook_tokens/{}",
            p.id,
            minted["id"].as_str().unwrap()
        )))
        .header("Authorization", format!("OAuth {}", p.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Once the ingress's cache (5 s here) forgets it, the token is refused.
    tokio::time::sleep(Duration::from_millis(5_200)).await;
    let r = stack
        .client
        .post(stack.url(&path))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_webhook_body_reaches_the_worker_through_the_object_store() {
    use sha2::Digest;
    let stack = Stack::start().await;
    let p = stack.create_project("large").await;
    stack
        .upload_script(
            &p,
            "big",
            r#"sha256sum "$PAYLOAD_FILE" | cut -c1-64; wc -c < "$PAYLOAD_FILE""#,
        )
        .await;
    // 5 MiB: far past what a NATS message may carry.
    let body: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let expected = hex::encode(sha2::Sha256::digest(&body));
    let r = stack.webhook(&p, "big", body.clone()).await;
    let id = accepted_id(r).await;
    let task = stack.wait_done(&p, &id, WITHIN).await;
    assert_eq!(task["status"], "complete", "{task}");
    let log = String::from_utf8(stack.log(&p, &id).await.to_vec()).unwrap();
    assert_eq!(log, format!("{expected}\n{}\n", body.len()));
    // Past 25 MiB (GitHub's maximum): 413, at once.
    let r = stack
        .webhook(&p, "big", vec![0u8; 25 * 1024 * 1024 + 1])
        .await;
    assert_eq!(r.status(), 413);
}
