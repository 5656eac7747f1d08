//! The `workhook` binary against a live stack (real nats-server and Postgres, services
//! in-process): needs `NATS_SERVER_BIN` and Postgres at `DATABASE_URL`, as the end-to-end suite.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use workhook_tests::{Project, Stack};

/// What a run of the binary printed and how it exited.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "workhook failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        assert_eq!(
            self.stdout.trim().lines().count(),
            1,
            "one line: {}",
            self.stdout
        );
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Runs the binary in `dir` with no settings from the environment but `env`.
async fn run_in(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_workhook"));
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("WORKHOOK_") || k.starts_with("IRON_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("workhook finished within 60 s")
        .expect("running workhook");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the binary with the project's settings in WORKHOOK_* variables.
async fn run(stack: &Stack, p: &Project, dir: &Path, args: &[&str]) -> Run {
    run_in(
        dir,
        &[
            ("WORKHOOK_URL", stack.http.as_str()),
            ("WORKHOOK_PROJECT_ID", p.id.as_str()),
            ("WORKHOOK_TOKEN", p.token.as_str()),
        ],
        args,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_list_info_revisions_download_pause_delete() {
    let stack = Stack::start().await;
    let p = stack.create_project("cli-codes").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = stack.upload_script(&p, "w", "echo one").await;
    stack.upload_script(&p, "w", "echo two").await;
    let code_id = first["id"].as_str().unwrap();

    let list = run(&stack, &p, d, &["code", "list"]).await.ok().stdout;
    let mut lines = list.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("ID") && header.contains("NAME") && header.contains("REV"));
    let row = lines.next().unwrap();
    assert!(row.starts_with(code_id) && row.contains(" w "), "{list}");
    // Aligned: NAME starts at the same column in the header and the row.
    assert_eq!(header.find("NAME"), row.find(" w ").map(|i| i + 1));

    let v = run(&stack, &p, d, &["code", "list", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v["codes"][0]["name"], "w");
    assert_eq!(v["codes"][0]["rev"], 2);

    let info = run(&stack, &p, d, &["code", "info", "w"]).await.ok().stdout;
    assert!(
        info.contains(code_id) && info.contains("sh run.sh"),
        "{info}"
    );
    let v = run(&stack, &p, d, &["--json", "code", "info", "w"])
        .await
        .ok()
        .json();
    assert_eq!(v["id"], code_id);

    let revs = run(&stack, &p, d, &["code", "revisions", "w"])
        .await
        .ok()
        .stdout;
    assert_eq!(revs.lines().count(), 3, "{revs}");
    assert!(revs.lines().next().unwrap().starts_with("REV"));
    let v = run(&stack, &p, d, &["code", "revisions", "w", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v["revisions"].as_array().unwrap().len(), 2);

    let out = run(
        &stack,
        &p,
        d,
        &["code", "download", "w", "--revision", "1", "-o", "one.zip"],
    )
    .await
    .ok();
    assert!(out.stdout.contains("one.zip"), "{}", out.stdout);
    let zip = std::fs::read(d.join("one.zip")).unwrap();
    assert!(zip.starts_with(b"PK"));
    let v = run(&stack, &p, d, &["code", "download", "w", "--json"])
        .await
        .ok()
        .json();
    let file = v["file"].as_str().unwrap();
    assert!(d.join(file).exists(), "{v}");
    assert!(v["bytes"].as_u64().unwrap() > 0);

    let out = run(&stack, &p, d, &["code", "pause", "w"])
        .await
        .ok()
        .stdout;
    assert!(out.contains("Paused"), "{out}");
    let v = run(&stack, &p, d, &["code", "resume", "w", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v["msg"], "Resumed");

    let url = run(&stack, &p, d, &["webhook-url", "w"]).await.ok().stdout;
    let url = url.trim();
    assert!(
        url.starts_with(&format!("{}/2/projects/{}/tasks/webhook", stack.http, p.id)),
        "{url}"
    );
    assert!(!url.contains(&p.token), "a scoped token, not the project's");
    let answer = stack.client.post(url).body("{}").send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let url = run(&stack, &p, d, &["webhook-url", "w", "--project-token"])
        .await
        .ok()
        .stdout;
    assert!(url.contains(&p.token));

    let out = run(&stack, &p, d, &["code", "delete", "w"])
        .await
        .ok()
        .stdout;
    assert!(out.contains("Deleted"), "{out}");
    let r = run(&stack, &p, d, &["code", "info", "w"]).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with("error: ") && r.stderr.contains("no code named \"w\""),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_queue_wait_list_info_log_retry_cancel() {
    let stack = Stack::start().await;
    let p = stack.create_project("cli-tasks").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stack
        .upload_script(&p, "w", "echo hi; cat \"$PAYLOAD_FILE\"")
        .await;
    std::fs::write(d.join("payload.json"), r#"{"n":7}"#).unwrap();

    let r = run(
        &stack,
        &p,
        d,
        &["task", "queue", "w", "--payload", "@payload.json", "--wait"],
    )
    .await
    .ok();
    let id = r.stdout.trim().to_string();
    assert_eq!(id.len(), 24, "{}", r.stdout);
    assert!(r.stderr.contains("complete"), "{}", r.stderr);

    let log = run(&stack, &p, d, &["task", "log", &id]).await.ok().stdout;
    assert_eq!(log, "hi\n{\"n\":7}");
    let v = run(&stack, &p, d, &["task", "log", &id, "--json"])
        .await
        .ok()
        .json();
    assert!(v["log"].as_str().unwrap().starts_with("hi\n"));
    let log = run(&stack, &p, d, &["task", "log", &id, "--follow"])
        .await
        .ok()
        .stdout;
    assert!(log.starts_with("hi\n"));

    let v = run(&stack, &p, d, &["task", "info", &id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v["status"], "complete");
    assert_eq!(v["payload"], r#"{"n":7}"#);
    let info = run(&stack, &p, d, &["task", "info", &id]).await.ok().stdout;
    assert!(
        info.starts_with("id ") && info.contains("complete"),
        "{info}"
    );

    let list = run(&stack, &p, d, &["task", "list", "--code", "w"])
        .await
        .ok()
        .stdout;
    assert!(list.starts_with("ID") && list.contains(&id), "{list}");
    let v = run(
        &stack,
        &p,
        d,
        &["task", "list", "--status", "complete", "--json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(v["tasks"][0]["id"], id.as_str());
    let v = run(
        &stack,
        &p,
        d,
        &[
            "task",
            "list",
            "--status",
            "error",
            "--per-page",
            "5",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(v["tasks"].as_array().unwrap().len(), 0);

    let retried = run(&stack, &p, d, &["task", "retry", &id])
        .await
        .ok()
        .stdout;
    let retried = retried.trim();
    assert_eq!(retried.len(), 24);
    let t = stack.wait_done(&p, retried, Duration::from_secs(20)).await;
    assert_eq!(t["retry_of"], id.as_str());
    let v = run(
        &stack,
        &p,
        d,
        &["task", "retry", &id, "--delay", "60", "--json"],
    )
    .await
    .ok()
    .json();
    let delayed = v["tasks"][0]["id"].as_str().unwrap();
    let t = stack.task(&p, delayed).await;
    assert_eq!(
        (t["delay"].as_i64(), t["status"].as_str()),
        (Some(60), Some("queued"))
    );

    // A delayed task is still queued: it can be cancelled.
    let v = run(
        &stack,
        &p,
        d,
        &[
            "task", "queue", "w", "--delay", "60", "--label", "l", "--json",
        ],
    )
    .await
    .ok()
    .json();
    let later = v["tasks"][0]["id"].as_str().unwrap().to_string();
    // Recorded first: a cancel racing the recorder's insert can answer "already finished
    // (queued)" (a registry race, outside the CLI).
    assert_eq!(stack.task(&p, &later).await["status"], "queued");
    let out = run(&stack, &p, d, &["task", "cancel", &later])
        .await
        .ok()
        .stdout;
    assert!(out.contains("Cancelled"), "{out}");
    assert_eq!(stack.task(&p, &later).await["status"], "cancelled");
    // A finished task cannot be: the server's 400 and its message.
    let r = run(&stack, &p, d, &["task", "cancel", &id]).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with("error: workhook answered 400") && r.stderr.contains("finished"),
        "{}",
        r.stderr
    );

    // Following a running task prints its output as it comes, then ends with it.
    stack
        .upload_script(&p, "slow", "echo a; sleep 1; echo b")
        .await;
    let slow = run(&stack, &p, d, &["task", "queue", "slow"])
        .await
        .ok()
        .stdout;
    let log = run(&stack, &p, d, &["task", "log", slow.trim(), "-f"])
        .await
        .ok()
        .stdout;
    assert_eq!(log, "a\nb\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_waited_for_exits_3() {
    let stack = Stack::start().await;
    let p = stack.create_project("cli-fail").await;
    let dir = tempfile::tempdir().unwrap();
    stack
        .upload_script(&p, "bad", "echo broken >&2; exit 4")
        .await;
    let r = run(&stack, &p, dir.path(), &["task", "queue", "bad", "--wait"]).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("ended as error"), "{}", r.stderr);
    let r = run(
        &stack,
        &p,
        dir.path(),
        &["task", "queue", "bad", "--wait", "--json"],
    )
    .await;
    assert_eq!(r.code, 3);
    assert_eq!(r.json()["status"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_create_list_info_cancel() {
    let stack = Stack::start().await;
    let p = stack.create_project("cli-schedules").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stack.upload_script(&p, "w", "echo hi").await;

    let id = run(
        &stack,
        &p,
        d,
        &[
            "schedule",
            "create",
            "w",
            "--run-every",
            "3600",
            "--start-at",
            "2099-01-01T00:00:00Z",
            "--run-times",
            "3",
            "--payload",
            "{}",
        ],
    )
    .await
    .ok()
    .stdout;
    let id = id.trim();
    assert_eq!(id.len(), 24);
    let v = run(
        &stack,
        &p,
        d,
        &["schedule", "create", "w", "--cron", "0 0 9 * * *", "--json"],
    )
    .await
    .ok()
    .json();
    let cron_id = v["schedules"][0]["id"].as_str().unwrap();

    let list = run(&stack, &p, d, &["schedule", "list"]).await.ok().stdout;
    assert!(list.starts_with("ID"), "{list}");
    assert!(list.contains(id) && list.contains("every 3600s"), "{list}");
    assert!(list.contains(cron_id) && list.contains("cron 0 0 9 * * *"));
    let v = run(&stack, &p, d, &["schedule", "list", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v["schedules"].as_array().unwrap().len(), 2);

    let v = run(&stack, &p, d, &["schedule", "info", id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v["status"], "scheduled");
    assert_eq!(v["run_every"], 3600);
    let info = run(&stack, &p, d, &["schedule", "info", id])
        .await
        .ok()
        .stdout;
    assert!(info.contains("scheduled"), "{info}");

    let out = run(&stack, &p, d, &["schedule", "cancel", id])
        .await
        .ok()
        .stdout;
    assert!(out.contains("Cancelled"), "{out}");
    let v = run(&stack, &p, d, &["schedule", "info", id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v["status"], "cancelled");

    // A period under a minute is the server's 400, shown with its message.
    let r = run(
        &stack,
        &p,
        d,
        &["schedule", "create", "w", "--run-every", "5"],
    )
    .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with("error: workhook answered 400"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_errors_and_usage() {
    let dir = tempfile::tempdir().unwrap();
    let r = run_in(dir.path(), &[], &["code", "list"]).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .starts_with("error: no project: set WORKHOOK_PROJECT_ID"),
        "{}",
        r.stderr
    );
    let r = run_in(
        dir.path(),
        &[("WORKHOOK_PROJECT_ID", "p")],
        &["task", "list"],
    )
    .await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no token: set WORKHOOK_TOKEN"));
    // Usage errors are clap's: exit 2.
    let r = run_in(dir.path(), &[], &["schedule", "create", "w"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = run_in(dir.path(), &[], &["task", "list", "--status", "nope"]).await;
    assert_eq!(r.code, 2);
    // Help carries examples.
    let r = run_in(dir.path(), &[], &["--help"]).await.ok();
    assert!(r.stdout.contains("Examples:"));
    let r = run_in(dir.path(), &[], &["task", "--help"]).await.ok();
    assert!(r.stdout.contains("workhook task queue"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iron_json_in_the_current_directory_is_read() {
    let stack = Stack::start().await;
    let p = stack.create_project("cli-iron").await;
    stack.upload_script(&p, "w", "echo hi").await;
    let dir = tempfile::tempdir().unwrap();
    let hostport = stack.http.strip_prefix("http://").unwrap();
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let file = serde_json::json!({
        "project_id": p.id,
        "token": p.token,
        "host": host,
        "port": port.parse::<u16>().unwrap(),
        "protocol": "http",
    });
    std::fs::write(dir.path().join("iron.json"), file.to_string()).unwrap();
    let v = run_in(dir.path(), &[], &["code", "list", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v["codes"][0]["name"], "w");
    // project create (admin, over gRPC) still takes --json after the subcommand.
    let v = run_in(
        dir.path(),
        &[
            ("WORKHOOK_ADMIN_TOKEN", stack.admin_token.as_str()),
            ("WORKHOOK_REGISTRY_URL", stack.grpc.as_str()),
        ],
        &["project", "create", "other", "--json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(v["name"], "other");
    assert!(v["token"].as_str().is_some_and(|t| !t.is_empty()));
    // The environment wins over the file.
    let r = run_in(
        dir.path(),
        &[("WORKHOOK_TOKEN", "wrong")],
        &["code", "list"],
    )
    .await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("401"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_upload_zips_a_directory_shows_progress_and_the_code_runs() {
    let stack = Stack::start().await;
    let p = stack.create_project("cli-upload").await;
    let dir = tempfile::tempdir().unwrap();
    let worker = dir.path().join("worker");
    std::fs::create_dir(&worker).unwrap();
    std::fs::write(
        worker.join("run.sh"),
        "echo from-upload; cat \"$PAYLOAD_FILE\"",
    )
    .unwrap();
    // Big enough for several progress steps.
    std::fs::write(worker.join("data.bin"), vec![7u8; 300 * 1024]).unwrap();
    let up = run(
        &stack,
        &p,
        dir.path(),
        &[
            "code",
            "upload",
            worker.to_str().unwrap(),
            "--name",
            "up",
            "--command",
            "sh run.sh",
        ],
    )
    .await
    .ok();
    assert!(up.stderr.contains("uploading: 100% of"), "{}", up.stderr);
    assert!(up.stdout.contains("code up uploaded as"), "{}", up.stdout);
    let queued = run(
        &stack,
        &p,
        dir.path(),
        &[
            "task",
            "queue",
            "up",
            "--payload",
            "hello",
            "--wait",
            "--json",
        ],
    )
    .await
    .ok();
    let id = queued.stdout.lines().find_map(|l| {
        serde_json::from_str::<Value>(l)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_string))
    });
    let id = id.unwrap_or_else(|| panic!("no id in {}", queued.stdout));
    let log = run(&stack, &p, dir.path(), &["task", "log", &id])
        .await
        .ok()
        .stdout;
    assert_eq!(log, "from-upload\nhello");
}
