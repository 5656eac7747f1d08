//! A webhook or a queued task runs the worker under IronWorker's contract, and its status and
//! log come back through the API.

use std::time::Duration;

use serde_json::json;
use workhook_tests::{process_gone, Stack};

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_body_reaches_the_worker_byte_for_byte() {
    let stack = Stack::start().await;
    let p = stack.create_project("hooks").await;
    stack
        .upload_script(&p, "echo", r#"cat "$PAYLOAD_FILE""#)
        .await;
    // Not JSON, not UTF-8, with newlines and a NUL: the payload is the raw body.
    let body: Vec<u8> = b"{\"action\":\"opened\"}\n\x00\xff\xfe line two\r\n".to_vec();
    let r = stack.webhook(&p, "echo", body.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["msg"], "Queued up.");
    let id = answer["id"].as_str().unwrap();
    assert!(workhook_core::ids::is_id(id), "{id}");

    let task = stack.wait_done(&p, id, WITHIN).await;
    assert_eq!(task["status"], "complete", "{task}");
    assert_eq!(task["code_name"], "echo");
    assert_eq!(task["code_rev"], "1");
    assert_eq!(task["log_size"], body.len());
    assert_eq!(&stack.log(&p, id).await[..], &body[..]);

    let r = stack.get(&p, &format!("/tasks/{id}/log")).await;
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_task_gets_the_ironworker_contract() {
    let stack = Stack::start().await;
    let p = stack.create_project("contract").await;
    let script = r#"
[ "$1" = "-payload" ] && [ "$2" = "$PAYLOAD_FILE" ] || { echo "bad -payload: $*" >&2; exit 9; }
[ "$3" = "-config" ] && [ "$4" = "$CONFIG_FILE" ] || { echo "bad -config: $*" >&2; exit 9; }
[ "$5" = "-id" ] && [ "$6" = "$TASK_ID" ] || { echo "bad -id: $*" >&2; exit 9; }
[ "$7" = "-d" ] && [ "$8" = "$TASK_DIR" ] || { echo "bad -d: $*" >&2; exit 9; }
[ "$(pwd)" = "$TASK_DIR" ] || { echo "cwd is $(pwd)" >&2; exit 9; }
[ -f helper.txt ] || { echo "package files missing" >&2; exit 9; }
[ -z "$WORKHOOK_ADMIN_TOKEN$DATABASE_URL" ] || { echo "runner secrets leaked" >&2; exit 9; }
echo "payload=$(cat "$PAYLOAD_FILE")"
echo "config=$(cat "$CONFIG_FILE")"
echo "task=$TASK_ID"
echo "greeting=$GREETING"
cat helper.txt
echo "to stderr" >&2
"#;
    stack
        .upload_code(
            &p,
            json!({"name": "contract", "command": "sh run.sh",
                   "config": "{\"k\":1}", "env_vars": {"GREETING": "hi there"}}),
            &[
                ("run.sh", script, 0o644),
                ("helper.txt", "from the package\n", 0o644),
            ],
        )
        .await;
    let id = stack
        .queue(
            &p,
            json!({"code_name": "contract", "payload": "{\"n\":42}"}),
        )
        .await;
    let task = stack.wait_done(&p, &id, WITHIN).await;
    assert_eq!(task["status"], "complete", "{task}");
    assert_eq!(task["payload"], "{\"n\":42}");
    let log = String::from_utf8(stack.log(&p, &id).await.to_vec()).unwrap();
    let expected_stdout = format!(
        "payload={{\"n\":42}}\nconfig={{\"k\":1}}\ntask={id}\ngreeting=hi there\nfrom the package\n"
    );
    // stdout and stderr are two pipes: their relative order in the log is arrival order.
    assert_eq!(
        log.len(),
        expected_stdout.len() + "to stderr\n".len(),
        "{log}"
    );
    assert!(log.contains("to stderr\n"), "{log}");
    let r = stack.get(&p, &format!("/tasks/{id}/outlog")).await;
    assert_eq!(r.text().await.unwrap(), expected_stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_worker_is_an_error_with_the_tail_of_stderr() {
    let stack = Stack::start().await;
    let p = stack.create_project("fails").await;
    stack
        .upload_script(
            &p,
            "fail",
            "i=0; while [ $i -lt 300 ]; do echo \"noise $i\" >&2; i=$((i+1)); done\necho 'it broke: disk on fire' >&2\nexit 3",
        )
        .await;
    let id = stack.queue(&p, json!({"code_name": "fail"})).await;
    let task = stack.wait_done(&p, &id, WITHIN).await;
    assert_eq!(task["status"], "error", "{task}");
    assert_eq!(task["error_class"], "Process Exit 3");
    let msg = task["msg"].as_str().unwrap();
    assert!(msg.ends_with("it broke: disk on fire"), "{msg}");
    assert!(msg.len() <= 1024, "msg is the tail, not the whole stderr");
    let log = stack.log(&p, &id).await;
    assert!(String::from_utf8_lossy(&log).contains("noise 0\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_past_its_timeout_is_killed_with_everything_it_started() {
    let stack = Stack::start().await;
    let p = stack.create_project("slow").await;
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // The worker starts a grandchild and waits; both must die at the timeout.
    stack
        .upload_script(
            &p,
            "slow",
            r#"sleep 300 & echo "$$ $!" > "$(cat "$PAYLOAD_FILE")"; echo started; wait"#,
        )
        .await;
    let id = stack
        .queue(
            &p,
            json!({"code_name": "slow", "payload": pids.to_str().unwrap(), "timeout": 2}),
        )
        .await;
    let task = stack.wait_done(&p, &id, WITHIN).await;
    assert_eq!(task["status"], "timeout", "{task}");
    assert_eq!(task["timeout"], 2);
    let duration = task["duration"].as_i64().unwrap();
    assert!((1_900..10_000).contains(&duration), "ran {duration} ms");
    let text = std::fs::read_to_string(&pids).unwrap();
    for pid in text.split_whitespace() {
        let pid: u32 = pid.parse().unwrap();
        let mut gone = false;
        for _ in 0..50 {
            if process_gone(pid) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "process {pid} outlived the timeout");
    }
    assert_eq!(&stack.log(&p, &id).await[..], b"started\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_queued_with_a_delay_waits_for_it() {
    let stack = Stack::start().await;
    let p = stack.create_project("delay").await;
    stack.upload_script(&p, "now", "date +%s%3N").await;
    let queued_at = chrono::Utc::now().timestamp_millis();
    let id = stack
        .queue(&p, json!({"code_name": "now", "delay": 2}))
        .await;
    let task = stack.wait_done(&p, &id, WITHIN).await;
    assert_eq!(task["status"], "complete", "{task}");
    let ran_at: i64 = String::from_utf8_lossy(&stack.log(&p, &id).await)
        .trim()
        .parse()
        .unwrap();
    assert!(
        ran_at - queued_at >= 2_000,
        "started {} ms after queueing",
        ran_at - queued_at
    );
}
