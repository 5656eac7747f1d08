//! The rest of the v2 API: code info/revisions/download/stats/pause/delete, task list, cancel,
//! progress and retry, schedules.

use std::time::Duration;

use serde_json::{json, Value};
use workhook_tests::{Project, Stack, StackOptions};

const WITHIN: Duration = Duration::from_secs(30);

async fn post_json(stack: &Stack, p: &Project, path: &str, body: Value) -> reqwest::Response {
    stack
        .client
        .post(stack.url(&format!("/2/projects/{}{path}", p.id)))
        .header("Authorization", format!("OAuth {}", p.token))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn json_of(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status(), status);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_routes_cover_info_revisions_download_stats_and_delete() {
    let stack = Stack::start().await;
    let p = stack.create_project("codes").await;
    let first = stack.upload_script(&p, "w", "echo one").await;
    let code_id = first["id"].as_str().unwrap().to_string();
    stack.upload_script(&p, "w", "echo two").await;

    let info = json_of(stack.get(&p, &format!("/codes/{code_id}")).await, 200).await;
    assert_eq!(info["name"], "w");
    assert_eq!(info["rev"], 2);

    let revs = json_of(
        stack.get(&p, &format!("/codes/{code_id}/revisions")).await,
        200,
    )
    .await;
    let revs = revs["revisions"].as_array().unwrap();
    assert_eq!(revs.len(), 2);
    assert_eq!(revs[0]["rev"], 2);
    assert_eq!(revs[1]["rev"], 1);

    // Download revision 1: the zip as uploaded.
    let r = stack
        .get(&p, &format!("/codes/{code_id}/download?revision=1"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/zip");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=w_1.zip"
    );
    let zip = r.bytes().await.unwrap();
    assert_eq!(
        &zip[..],
        &workhook_tests::zip_of(&[("run.sh", "echo one", 0o644)])[..]
    );
    let r = stack
        .get(&p, &format!("/codes/{code_id}/download?revision=9"))
        .await;
    assert_eq!(r.status(), 404);

    // A task runs and shows up in the stats.
    let id = stack.queue(&p, json!({"code_name": "w"})).await;
    stack.wait_done(&p, &id, WITHIN).await;
    let stats = json_of(stack.get(&p, &format!("/codes/{code_id}/stats")).await, 200).await;
    assert_eq!(stats["complete"], 1);
    assert_eq!(stats["queued"], 0);

    let r = stack
        .client
        .delete(stack.url(&format!("/2/projects/{}/codes/{code_id}", p.id)))
        .header("Authorization", format!("OAuth {}", p.token))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(r, 200).await["msg"], "Deleted");
    assert_eq!(
        stack.get(&p, &format!("/codes/{code_id}")).await.status(),
        404
    );
    assert_eq!(stack.webhook(&p, "w", "x").await.status(), 404);
    assert_eq!(
        stack
            .get(&p, &format!("/codes/{}", "f".repeat(24)))
            .await
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_codes_keep_their_tasks_queued_until_resumed_and_cancel_all_cancels_them() {
    let stack = Stack::start().await;
    let p = stack.create_project("pause").await;
    let code = stack.upload_script(&p, "w", "echo ran").await;
    let code_id = code["id"].as_str().unwrap();
    let r = stack
        .post_empty(&p, &format!("/codes/{code_id}/pause_task_queue"))
        .await;
    assert_eq!(json_of(r, 200).await["msg"], "Paused");
    let a = stack.queue(&p, json!({"code_name": "w"})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.task(&p, &a).await["status"], "queued");
    let r = stack
        .post_empty(&p, &format!("/codes/{code_id}/resume_task_queue"))
        .await;
    assert_eq!(json_of(r, 200).await["msg"], "Resumed");
    assert_eq!(stack.wait_done(&p, &a, WITHIN).await["status"], "complete");

    stack
        .post_empty(&p, &format!("/codes/{code_id}/pause_task_queue"))
        .await;
    let b = stack.queue(&p, json!({"code_name": "w"})).await;
    let c = stack.queue(&p, json!({"code_name": "w"})).await;
    let r = stack
        .post_empty(&p, &format!("/codes/{code_id}/cancel_all"))
        .await;
    assert_eq!(json_of(r, 200).await["cancelled"], 2);
    stack
        .post_empty(&p, &format!("/codes/{code_id}/resume_task_queue"))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in [b, c] {
        let task = stack.task(&p, &id).await;
        assert_eq!(task["status"], "cancelled");
        assert_eq!(
            stack.log(&p, &id).await.len(),
            0,
            "a cancelled task never starts"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_listed_with_filters_cancelled_retried_and_report_progress() {
    let stack = Stack::start().await;
    let p = stack.create_project("tasks").await;
    stack.upload_script(&p, "ok", "echo fine").await;
    stack.upload_script(&p, "bad", "exit 1").await;
    let ok = stack
        .queue(&p, json!({"code_name": "ok", "label": "nightly"}))
        .await;
    let bad = stack.queue(&p, json!({"code_name": "bad"})).await;
    stack.wait_done(&p, &ok, WITHIN).await;
    stack.wait_done(&p, &bad, WITHIN).await;
    let later = stack
        .queue(&p, json!({"code_name": "ok", "delay": 600}))
        .await;

    let list = |q: &'static str| {
        let stack = &stack;
        let p = &p;
        async move {
            let body = json_of(stack.get(p, &format!("/tasks{q}")).await, 200).await;
            body["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("").await, vec![later.clone(), bad.clone(), ok.clone()]);
    assert_eq!(list("?code_name=ok").await, vec![later.clone(), ok.clone()]);
    assert_eq!(
        list("?error=1&complete=1").await,
        vec![bad.clone(), ok.clone()]
    );
    assert_eq!(list("?queued=1").await, vec![later.clone()]);
    assert_eq!(list("?label=nightly").await, vec![ok.clone()]);
    assert_eq!(list("?per_page=1&page=1").await, vec![bad.clone()]);
    assert_eq!(list("?from_time=4000000000").await, Vec::<String>::new());
    assert_eq!(stack.get(&p, "/tasks?per_page=101").await.status(), 400);

    // Cancel a queued task: no body, no content type.
    let r = stack
        .post_empty(&p, &format!("/tasks/{later}/cancel"))
        .await;
    assert_eq!(json_of(r, 200).await["msg"], "Cancelled");
    assert_eq!(stack.task(&p, &later).await["status"], "cancelled");
    let r = stack.post_empty(&p, &format!("/tasks/{ok}/cancel")).await;
    assert_eq!(r.status(), 400, "a finished task cannot be cancelled");

    // Progress wants JSON.
    let r = post_json(
        &stack,
        &p,
        &format!("/tasks/{ok}/progress"),
        json!({"percent": 42, "msg": "half"}),
    )
    .await;
    assert_eq!(json_of(r, 200).await["msg"], "Progress set");
    let task = stack.task(&p, &ok).await;
    assert_eq!(
        (task["percent"].clone(), task["msg"].clone()),
        (json!(42), json!("half"))
    );
    let r = stack.post_empty(&p, &format!("/tasks/{ok}/progress")).await;
    assert_eq!(r.status(), 406);
    let r = post_json(
        &stack,
        &p,
        &format!("/tasks/{ok}/progress"),
        json!({"percent": 101}),
    )
    .await;
    assert_eq!(r.status(), 400);

    // Retry makes a new task linked to the old one.
    let r = post_json(
        &stack,
        &p,
        &format!("/tasks/{bad}/retry"),
        json!({"delay": 0}),
    )
    .await;
    let body = json_of(r, 200).await;
    let retried = body["tasks"][0]["id"].as_str().unwrap().to_string();
    assert_ne!(retried, bad);
    let task = stack.wait_done(&p, &retried, WITHIN).await;
    assert_eq!(task["retry_count"], 1);
    assert_eq!(task["retry_of"], bad.as_str());
    assert_eq!(task["status"], "error");
    let r = post_json(
        &stack,
        &p,
        &format!("/tasks/{}/retry", "a".repeat(24)),
        json!({}),
    )
    .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_task_is_cancelled_within_a_second_and_keeps_its_log() {
    // One slot: the task queued after the cancel can only run once the slot is free.
    let stack = Stack::start_with(StackOptions {
        concurrency: 1,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("cancel").await;
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    stack
        .upload_script(
            &p,
            "long",
            r#"sleep 300 & echo "$$ $!" > "$(cat "$PAYLOAD_FILE")"; echo started; wait"#,
        )
        .await;
    stack.upload_script(&p, "quick", "echo quick").await;
    let id = stack
        .queue(
            &p,
            json!({"code_name": "long", "payload": pids.to_str().unwrap()}),
        )
        .await;
    let until = std::time::Instant::now() + WITHIN;
    while stack.log(&p, &id).await.is_empty() {
        assert!(
            std::time::Instant::now() < until,
            "the worker never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = stack.post_empty(&p, &format!("/tasks/{id}/cancel")).await;
    let cancelled_at = std::time::Instant::now();
    assert_eq!(r.status(), 200);
    assert_eq!(stack.task(&p, &id).await["status"], "cancelled");
    // The worker and what it started are gone within a second.
    let text = std::fs::read_to_string(&pids).unwrap();
    for pid in text.split_whitespace().map(|p| p.parse::<u32>().unwrap()) {
        while !workhook_tests::process_gone(pid) {
            assert!(
                cancelled_at.elapsed() < Duration::from_secs(1),
                "process {pid} outlived the cancel by a second"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The slot is free again.
    let q = stack.queue(&p, json!({"code_name": "quick"})).await;
    assert_eq!(stack.wait_done(&p, &q, WITHIN).await["status"], "complete");
    assert_eq!(
        &stack.log(&p, &id).await[..],
        b"started\n",
        "the log is kept"
    );
    assert_eq!(stack.task(&p, &id).await["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_created_listed_updated_and_cancelled() {
    let stack = Stack::start_with(StackOptions {
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("schedules").await;
    stack.upload_script(&p, "w", "true").await;
    let r = post_json(
        &stack,
        &p,
        "/schedules",
        json!({"schedules": [
            {"code_name": "w", "payload": "{}", "run_every": 3600, "run_times": 5,
             "start_at": "2100-01-01T00:00:00Z", "label": null, "name": "hourly"},
            {"code_name": "w", "start_at": "2100-01-01T00:00:00.5+01:00"}
        ]}),
    )
    .await;
    let body = json_of(r, 200).await;
    assert_eq!(body["msg"], "Scheduled");
    let id = body["schedules"][0]["id"].as_str().unwrap().to_string();
    assert!(workhook_core::ids::is_id(&id));

    let s = json_of(stack.get(&p, &format!("/schedules/{id}")).await, 200).await;
    assert_eq!(s["status"], "scheduled");
    assert_eq!(s["run_every"], 3600);
    assert_eq!(s["run_times"], 5);
    assert_eq!(s["start_at"], "2100-01-01T00:00:00.000Z");
    assert_eq!(s["next_start"], "2100-01-01T00:00:00.000Z");
    assert_eq!(s["run_count"], 0);
    assert_eq!(s["last_run_time"], "0001-01-01T00:00:00Z");

    let list = json_of(stack.get(&p, "/schedules").await, 200).await;
    assert_eq!(list["schedules"].as_array().unwrap().len(), 2);

    let r = stack
        .client
        .put(stack.url(&format!("/2/projects/{}/schedules/{id}", p.id)))
        .header("Authorization", format!("OAuth {}", p.token))
        .json(&json!({"code_name": "w", "run_every": 120, "start_at": "2100-01-02T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(r, 200).await["msg"], "Updated");
    let s = json_of(stack.get(&p, &format!("/schedules/{id}")).await, 200).await;
    assert_eq!(s["run_every"], 120);

    let r = stack
        .post_empty(&p, &format!("/schedules/{id}/cancel"))
        .await;
    assert_eq!(json_of(r, 200).await["msg"], "Cancelled");
    let s = json_of(stack.get(&p, &format!("/schedules/{id}")).await, 200).await;
    assert_eq!(s["status"], "cancelled");

    // Refusals: a period under a minute, an unknown code, no JSON, an unknown schedule.
    for (body, status) in [
        (
            json!({"schedules": [{"code_name": "w", "run_every": 59}]}),
            400,
        ),
        (
            json!({"schedules": [{"code_name": "nope", "run_every": 60}]}),
            404,
        ),
        (json!({"schedules": []}), 400),
    ] {
        let r = post_json(&stack, &p, "/schedules", body.clone()).await;
        assert_eq!(r.status(), status, "{body}");
    }
    let r = stack.post_empty(&p, "/schedules").await;
    assert_eq!(r.status(), 406);
    assert_eq!(
        stack
            .get(&p, &format!("/schedules/{}", "b".repeat(24)))
            .await
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_schedule_queues_one_task_that_carries_its_id() {
    let stack = Stack::start().await;
    let p = stack.create_project("scheduled").await;
    stack.upload_script(&p, "w", r#"cat "$PAYLOAD_FILE""#).await;
    let start_at = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    let r = post_json(
        &stack,
        &p,
        "/schedules",
        json!({"schedules": [{"code_name": "w", "payload": "tick", "start_at": start_at}]}),
    )
    .await;
    let id = json_of(r, 200).await["schedules"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let until = std::time::Instant::now() + WITHIN;
    let schedule = loop {
        let s = json_of(stack.get(&p, &format!("/schedules/{id}")).await, 200).await;
        if s["status"] == "complete" {
            break s;
        }
        assert!(
            std::time::Instant::now() < until,
            "the schedule never ran: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(schedule["run_count"], 1);
    assert_eq!(schedule["msg"], "Ran max times.");
    let tasks = json_of(stack.get(&p, "/tasks").await, 200).await;
    let tasks = tasks["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "exactly one task: {tasks:?}");
    assert_eq!(tasks[0]["schedule_id"], id.as_str());
    let task_id = tasks[0]["id"].as_str().unwrap();
    stack.wait_done(&p, task_id, WITHIN).await;
    assert_eq!(&stack.log(&p, task_id).await[..], b"tick");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_on_several_registries_queues_each_run_exactly_once() {
    let mut stack = Stack::start().await;
    stack.add_registry().await;
    stack.add_registry().await;
    let p = stack.create_project("cron").await;
    stack.upload_script(&p, "w", "true").await;
    let r = post_json(
        &stack,
        &p,
        "/schedules",
        json!({"schedules": [{"code_name": "w", "cron": "* * * * * *", "run_times": 4}]}),
    )
    .await;
    let id = json_of(r, 200).await["schedules"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let until = std::time::Instant::now() + WITHIN;
    let schedule = loop {
        let s = json_of(stack.get(&p, &format!("/schedules/{id}")).await, 200).await;
        if s["status"] == "complete" {
            break s;
        }
        assert!(std::time::Instant::now() < until, "{s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(schedule["run_count"], 4);
    assert_eq!(schedule["cron"], "* * * * * *");
    let tasks = json_of(stack.get(&p, "/tasks").await, 200).await;
    let tasks = tasks["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 4, "one task per run, none doubled: {tasks:?}");
    let mut ids: Vec<&str> = tasks.iter().map(|t| t["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    for t in tasks {
        assert_eq!(t["schedule_id"], id.as_str());
    }
    // Both run_every and cron, or a bad expression, are refused.
    for bad in [
        json!({"code_name": "w", "cron": "* * * * * *", "run_every": 60}),
        json!({"code_name": "w", "cron": "every day"}),
    ] {
        let r = post_json(&stack, &p, "/schedules", json!({"schedules": [bad]})).await;
        assert_eq!(r.status(), 400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_loses_and_doubles_no_run_across_a_registry_restart() {
    let mut stack = Stack::start().await;
    let p = stack.create_project("cron-restart").await;
    stack.upload_script(&p, "w", "true").await;
    let r = post_json(
        &stack,
        &p,
        "/schedules",
        json!({"schedules": [{"code_name": "w", "cron": "* * * * * *", "run_times": 6}]}),
    )
    .await;
    let id = json_of(r, 200).await["schedules"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    stack.stop_registry().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.start_registry_again().await;
    let until = std::time::Instant::now() + WITHIN;
    let schedule = loop {
        let s = json_of(stack.get(&p, &format!("/schedules/{id}")).await, 200).await;
        if s["status"] == "complete" {
            break s;
        }
        assert!(std::time::Instant::now() < until, "{s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(schedule["run_count"], 6);
    assert_eq!(schedule["msg"], "Ran max times.");
    let tasks = json_of(stack.get(&p, "/tasks").await, 200).await;
    let tasks = tasks["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 6, "one task per run: {tasks:?}");
    for t in tasks {
        assert_eq!(t["schedule_id"], id.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_stops_at_its_end_at() {
    let stack = Stack::start().await;
    let p = stack.create_project("end-at").await;
    stack.upload_script(&p, "w", "true").await;
    let end_at = (chrono::Utc::now() + chrono::Duration::milliseconds(2_500)).to_rfc3339();
    let r = post_json(
        &stack,
        &p,
        "/schedules",
        json!({"schedules": [{"code_name": "w", "cron": "* * * * * *", "end_at": end_at}]}),
    )
    .await;
    let id = json_of(r, 200).await["schedules"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let until = std::time::Instant::now() + WITHIN;
    let schedule = loop {
        let s = json_of(stack.get(&p, &format!("/schedules/{id}")).await, 200).await;
        if s["status"] == "complete" {
            break s;
        }
        assert!(std::time::Instant::now() < until, "{s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(schedule["msg"], "Reached end_at.");
    let runs = schedule["run_count"].as_i64().unwrap();
    assert!((1..=3).contains(&runs), "{runs} runs in 2.5 s");
    let tasks = json_of(stack.get(&p, "/tasks").await, 200).await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len() as i64, runs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_missing_token_and_an_unknown_id() {
    let stack = Stack::start_with(StackOptions {
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("routes").await;
    stack.upload_script(&p, "w", "true").await;
    let none = "0".repeat(24);
    let routes: Vec<(reqwest::Method, String)> = {
        use reqwest::Method as M;
        vec![
            (M::GET, format!("/codes/{none}")),
            (M::DELETE, format!("/codes/{none}")),
            (M::GET, format!("/codes/{none}/revisions")),
            (M::GET, format!("/codes/{none}/download")),
            (M::GET, format!("/codes/{none}/stats")),
            (M::POST, format!("/codes/{none}/pause_task_queue")),
            (M::POST, format!("/codes/{none}/resume_task_queue")),
            (M::POST, format!("/codes/{none}/cancel_all")),
            (M::GET, format!("/codes/{none}/webhook_tokens")),
            (M::POST, format!("/codes/{none}/webhook_tokens")),
            (M::DELETE, format!("/codes/{none}/webhook_tokens/{none}")),
            (M::GET, format!("/tasks/{none}")),
            (M::GET, format!("/tasks/{none}/log")),
            (M::GET, format!("/tasks/{none}/outlog")),
            (M::POST, format!("/tasks/{none}/cancel")),
            (M::POST, format!("/tasks/{none}/progress")),
            (M::POST, format!("/tasks/{none}/retry")),
            (M::GET, format!("/schedules/{none}")),
            (M::PUT, format!("/schedules/{none}")),
            (M::POST, format!("/schedules/{none}/cancel")),
        ]
    };
    let body = json!({"code_name": "w", "percent": 1, "delay": 0});
    for (method, path) in &routes {
        let url = stack.url(&format!("/2/projects/{}{path}", p.id));
        // No token: 401.
        let r = stack
            .client
            .request(method.clone(), &url)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} without a token");
        // A good token and an id nobody issued: 404, as JSON.
        let r = stack
            .client
            .request(method.clone(), &url)
            .header("Authorization", format!("OAuth {}", p.token))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
        let answer: Value = r.json().await.unwrap();
        assert!(
            answer["msg"].as_str().unwrap().contains("not found"),
            "{method} {path}: {answer}"
        );
    }
    // The JSON routes want their content type: 406.
    for path in ["/tasks", "/schedules"] {
        let r = stack
            .client
            .post(stack.url(&format!("/2/projects/{}{path}", p.id)))
            .header("Authorization", format!("OAuth {}", p.token))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 406, "{path}");
    }
}
