//! Queued tasks wait in the stream, not in Postgres: a task's row is written when something reads
//! it (a lookup, a list, the stats) or when a runner starts it, never at the publish rate. What a
//! client sees is the same as if every task had been recorded at once.

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::Connection;
use workhook_tests::{accepted_id, Project, RunCounter, Stack, StackOptions};

const WITHIN: Duration = Duration::from_secs(30);

/// How many task rows the stack's database holds.
async fn rows(stack: &Stack) -> i64 {
    let mut db = sqlx::PgConnection::connect(&stack.db.url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM tasks")
        .fetch_one(&mut db)
        .await
        .unwrap();
    n
}

async fn listed(stack: &Stack, p: &Project, query: &str) -> Vec<String> {
    let r = stack.get(p, &format!("/tasks{query}")).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_are_recorded_when_read_not_when_published() {
    let mut stack = Stack::start_with(StackOptions {
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("lazy").await;
    let runs = RunCounter::new();
    let code = stack
        .upload_script(&p, "w", &format!("{}; cat \"$PAYLOAD_FILE\"", runs.mark()))
        .await;
    let code_id = code["id"].as_str().unwrap().to_string();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(accepted_id(stack.webhook(&p, "w", format!("body {i}")).await).await);
    }
    // A delayed task is recorded as it arrives: it waits in its row until due.
    let later = stack
        .queue(&p, json!({"code_name": "w", "delay": 600}))
        .await;
    let until = std::time::Instant::now() + WITHIN;
    while rows(&stack).await < 1 {
        assert!(
            std::time::Instant::now() < until,
            "the delayed task was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rows(&stack).await, 1, "only the delayed task is recorded");

    // A lookup finds a task in the stream and records that one.
    let task = stack.task(&p, &ids[1]).await;
    assert_eq!(task["status"], "queued");
    assert_eq!(task["code_name"], "w");
    assert_eq!(rows(&stack).await, 2);
    assert_eq!(stack.log(&p, &ids[2]).await.len(), 0);
    assert_eq!(rows(&stack).await, 3);
    let none = "0123456789abcdef01234567";
    assert_eq!(stack.get(&p, &format!("/tasks/{none}")).await.status(), 404);

    // A list records everything queued before it, newest first as always.
    let mut all = listed(&stack, &p, "").await;
    assert_eq!(all[0], later);
    let mut expected = ids.clone();
    expected.push(later.clone());
    all.sort();
    expected.sort();
    assert_eq!(all, expected);
    assert_eq!(
        listed(&stack, &p, "?queued=1").await.len(),
        4,
        "every task is queued"
    );
    assert_eq!(rows(&stack).await, 4);

    // The next catch-up starts where this one stopped.
    let more = accepted_id(stack.webhook(&p, "w", "more").await).await;
    let r = stack.get(&p, &format!("/codes/{code_id}/stats")).await;
    assert_eq!(r.status(), 200);
    let stats: Value = r.json().await.unwrap();
    assert_eq!(stats["queued"], 5, "{stats}");
    assert_eq!(rows(&stack).await, 5);

    // Tasks recorded by a read, and tasks nobody read, run the same.
    let unread = accepted_id(stack.webhook(&p, "w", "unread").await).await;
    stack.add_runner();
    for id in ids.iter().chain([&more, &unread]) {
        let done = stack.wait_done(&p, id, WITHIN).await;
        assert_eq!(done["status"], "complete", "{done}");
    }
    assert_eq!(&stack.log(&p, &unread).await[..], b"unread");
    assert_eq!(runs.count(), 5, "each task ran once");
    assert_eq!(stack.task(&p, &later).await["status"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_while_it_waits_unrecorded_never_runs() {
    let mut stack = Stack::start_with(StackOptions {
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("cancel").await;
    let runs = RunCounter::new();
    let code = stack.upload_script(&p, "w", &runs.mark()).await;
    let code_id = code["id"].as_str().unwrap().to_string();
    let one = accepted_id(stack.webhook(&p, "w", "one").await).await;
    let r = stack.post_empty(&p, &format!("/tasks/{one}/cancel")).await;
    assert_eq!(r.status(), 200);
    let two = accepted_id(stack.webhook(&p, "w", "two").await).await;
    let three = accepted_id(stack.webhook(&p, "w", "three").await).await;
    let r = stack
        .post_empty(&p, &format!("/codes/{code_id}/cancel_all"))
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["cancelled"], 2, "{body}");
    let ran = accepted_id(stack.webhook(&p, "w", "runs").await).await;

    stack.add_runner();
    assert_eq!(
        stack.wait_done(&p, &ran, WITHIN).await["status"],
        "complete"
    );
    for id in [&one, &two, &three] {
        assert_eq!(stack.task(&p, id).await["status"], "cancelled");
    }
    assert_eq!(runs.count(), 1, "only the task not cancelled ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_recorder_consumer_is_narrowed_to_delayed_tasks_when_a_service_starts() {
    use async_nats::jetstream::consumer::pull;
    use workhook_core::stream::{Layout, RECORDER_CONSUMER};

    let nats = workhook_tests::NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let layout = Layout::new("upgrade").unwrap();
    let window = Duration::from_secs(120);
    // As an earlier version left it: the recorder took every task.
    let stream = js
        .get_or_create_stream(layout.stream_config(1, window))
        .await
        .unwrap();
    let older = pull::Config {
        filter_subject: String::new(),
        ..layout.recorder_config()
    };
    stream.create_consumer(older).await.unwrap();
    let filter = |stream: async_nats::jetstream::stream::Stream| async move {
        let consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(RECORDER_CONSUMER).await.unwrap();
        consumer.cached_info().config.filter_subject.clone()
    };
    assert_eq!(filter(stream.clone()).await, "");

    let stream = layout.ensure_stream(&js, 1, window).await.unwrap();
    assert_eq!(filter(stream).await, layout.delayed_tasks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_task_with_a_delivery_id_carries_a_nats_msg_id() {
    use futures_util::StreamExt;

    let stack = Stack::start_with(StackOptions {
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("msgid").await;
    stack.upload_script(&p, "w", "true").await;
    let nats = async_nats::connect(stack.nats.url()).await.unwrap();
    let mut messages = nats
        .subscribe(format!("{}.tasks.>", stack.prefix))
        .await
        .unwrap();
    nats.flush().await.unwrap();

    let fresh = accepted_id(stack.webhook(&p, "w", "fresh").await).await;
    let delivered = stack
        .client
        .post(stack.url(&format!(
            "/2/projects/{}/tasks/webhook?code_name=w&oauth={}",
            p.id, p.token
        )))
        .header("X-GitHub-Delivery", "delivery-1")
        .body("delivered")
        .send()
        .await
        .unwrap();
    let delivered = accepted_id(delivered).await;
    let layout = workhook_core::stream::Layout::new(&stack.prefix).unwrap();
    for (id, msg_id) in [(&fresh, None), (&delivered, Some(delivered.as_str()))] {
        let message = tokio::time::timeout(WITHIN, messages.next())
            .await
            .expect("the task's message")
            .unwrap();
        // A fresh task is named by its sequence, on its code's subject; a delivery id's task
        // carries its id, on a subject of its own. (A core subscriber does not see the
        // sequence: 1 stands in for it.)
        let headers = message.headers.unwrap_or_default();
        let envelope = workhook_core::Envelope::from_message(Some(&headers), 1).unwrap();
        let code = layout.code_subject(envelope.priority, &p.id, &envelope.code_id);
        match msg_id {
            None => {
                assert!(workhook_core::ids::sequence_of(id).is_some(), "{id}");
                assert_eq!(message.subject.as_str(), code);
            }
            Some(_) => {
                assert_eq!(envelope.task_id, *id);
                assert_eq!(message.subject.as_str(), format!("{code}.{id}"));
            }
        }
        assert_eq!(
            headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            msg_id,
            "{headers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_several_catch_up_batches_is_recorded_in_full() {
    let stack = Stack::start_with(StackOptions {
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("backlog").await;
    let code = stack.upload_script(&p, "w", "true").await;
    let code_id = code["id"].as_str().unwrap().to_string();
    // More than two of the catch-up's batches of 500.
    const QUEUED: usize = 1_234;
    for chunk in 0..QUEUED.div_ceil(64) {
        let sends = (chunk * 64..QUEUED.min((chunk + 1) * 64))
            .map(|i| stack.webhook(&p, "w", format!("{i}")));
        for r in futures_util::future::join_all(sends).await {
            accepted_id(r).await;
        }
    }
    assert_eq!(rows(&stack).await, 0);
    let r = stack.get(&p, &format!("/codes/{code_id}/stats")).await;
    assert_eq!(r.status(), 200);
    let stats: Value = r.json().await.unwrap();
    assert_eq!(stats["queued"], QUEUED, "{stats}");
    assert_eq!(rows(&stack).await, QUEUED as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_finds_a_queued_task_at_its_sequence_and_on_a_subject_of_its_own() {
    use workhook_core::ids;

    let stack = Stack::start_with(StackOptions {
        runners: 0,
        ..Default::default()
    })
    .await;
    let p = stack.create_project("lookups").await;
    stack.upload_script(&p, "w", "true").await;
    let first = accepted_id(stack.webhook(&p, "w", "first").await).await;
    let (_, sequence) =
        ids::sequence_of(&first).expect("a webhook's task is named by its sequence");

    let layout = workhook_core::stream::Layout::new(&stack.prefix).unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap());
    let stream = js.get_stream(layout.stream()).await.unwrap();
    let stored = stream.get_raw_message(sequence).await.unwrap();
    let envelope = workhook_core::Envelope::from_message(Some(&stored.headers), sequence).unwrap();
    assert_eq!(envelope.task_id, first);
    assert_eq!(
        stored.subject.as_str(),
        layout.code_subject(envelope.priority, &p.id, &envelope.code_id)
    );

    // Copies of its message that carry ids of their own, on subjects of their own, as a
    // delivery id's task is published: one of them an id that has a sequence id's shape (a
    // hash can), whose sequence holds no task.
    let own = "6553f100ffffffffff00abcd".to_string();
    let shaped = "00000000000000000000abcd".to_string();
    assert!(ids::sequence_of(&own).is_none() && ids::sequence_of(&shaped).is_some());
    for id in [&own, &shaped] {
        let copy = workhook_core::Envelope {
            task_id: id.clone(),
            ..envelope.clone()
        };
        let subject = layout.subject_for(&copy);
        js.publish_with_headers(subject, copy.to_headers(), stored.payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Another project's task: its sequence is no task of this project.
    let q = stack.create_project("others").await;
    stack.upload_script(&q, "w", "true").await;
    let theirs = accepted_id(stack.webhook(&q, "w", "theirs").await).await;

    for id in [&first, &own, &shaped] {
        let task = stack.task(&p, id).await;
        assert_eq!(task["id"], id.as_str(), "{task}");
        assert_eq!(task["status"], "queued", "{task}");
        assert_eq!(task["code_name"], "w", "{task}");
        assert_eq!(task["payload"], "first", "{task}");
    }
    assert_eq!(rows(&stack).await, 3, "each lookup records its own task");
    let (seconds, _) = ids::sequence_of(&first).unwrap();
    for never in [
        // The right sequence, received in another second: a task of another stream.
        ids::for_sequence((i64::from(seconds) - 1) * 1000, sequence),
        // A sequence the stream never held.
        ids::for_sequence(i64::from(seconds) * 1000, 999_999),
        // Another project's task.
        theirs.clone(),
        ids::new_id(),
    ] {
        assert_eq!(
            stack.get(&p, &format!("/tasks/{never}")).await.status(),
            404,
            "{never}"
        );
    }
    assert_eq!(stack.task(&q, &theirs).await["status"], "queued");
}
