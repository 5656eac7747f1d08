//! Priorities: with a backlog, a free slot takes the highest priority first.

use std::time::Duration;

use serde_json::json;
use workhook_tests::{Stack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_slot_takes_the_highest_priority_first() {
    let mut stack = Stack::start_with(StackOptions {
        runners: 0,
        concurrency: 1,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("priorities").await;
    let dir = tempfile::tempdir().unwrap();
    let order = dir.path().join("order");
    stack
        .upload_script(
            &p,
            "w",
            &format!(r#"cat "$PAYLOAD_FILE" >> {}"#, order.display()),
        )
        .await;
    // A backlog queued lowest priority first, then one runner with one slot.
    let mut ids = Vec::new();
    for (priority, n) in [(0, 3), (1, 3), (2, 3)] {
        for i in 0..n {
            ids.push(
                stack
                    .queue(
                        &p,
                        json!({"code_name": "w", "priority": priority, "payload": format!("p{priority}.{i}\n")}),
                    )
                    .await,
            );
        }
    }
    stack.add_runner();
    for id in &ids {
        stack.wait_done(&p, id, Duration::from_secs(60)).await;
    }
    let ran: Vec<String> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(|l| l[..2].to_string())
        .collect();
    assert_eq!(
        ran,
        ["p2", "p2", "p2", "p1", "p1", "p1", "p0", "p0", "p0"],
        "{ran:?}"
    );
}
