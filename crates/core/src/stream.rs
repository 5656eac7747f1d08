//! The JetStream layout: one stream per installation, named from the prefix, holding every task
//! under `<prefix>.tasks.p<priority>.<project>.<code>` when it is named by its stream sequence
//! (what the ingress publishes for a webhook or an API task that does not wait), under
//! `<prefix>.tasks.p<priority>.<project>.<code>.<task>` when it carries its own id (a delivery
//! id's task, a retry, a scheduled or released task), or under
//! `<prefix>.tasks.delayed.<project>.<code>.<task>` while it waits.
//!
//! nats-server keeps state for every distinct subject it stores: a subject per webhook cost the
//! ingress 10-30% of the ceiling and nats-server 40% more memory during a burst
//! (docs/BENCHMARKS.md, rounds 9 and 10). A task named by its sequence needs no subject of its
//! own to be found: the registry reads it at its sequence. The prefix lets tests and several
//! installations share one NATS server without seeing each other.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy},
    stream,
};

/// How long JetStream remembers a `Nats-Msg-Id` to drop a duplicate publish, by default.
pub const DUPLICATE_WINDOW_SECS: u64 = 120;

/// How long a runner holds a task without renewing its lease, unless the runners say otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Durable consumer through which the registry's recorder records delayed tasks (every other
/// queued task is recorded only when something reads it, or when a runner starts it).
pub const RECORDER_CONSUMER: &str = "recorder";
/// Durable consumers shared by all runners, one per priority: `runners-p2`, `runners-p1`,
/// `runners-p0`. A runner with a free slot takes from the highest priority that has a task.
pub const RUNNER_CONSUMER_PREFIX: &str = "runners-p";
/// Task priorities, highest first.
pub const PRIORITIES: [u8; 3] = [2, 1, 0];

/// The runners' consumer for one priority.
pub fn runner_consumer(priority: u8) -> String {
    format!("{RUNNER_CONSUMER_PREFIX}{priority}")
}

/// How a service reaches NATS and which installation's stream it uses: the same flags and
/// environment variables in every service (flattened into each one's configuration).
#[derive(Debug, Clone, clap::Args)]
pub struct NatsConfig {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long = "nats-url",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,

    /// Stream and subject namespace; installations sharing one NATS server need distinct ones.
    #[arg(
        long = "nats-prefix",
        env = "WORKHOOK_NATS_PREFIX",
        default_value = "workhook"
    )]
    pub prefix: String,

    /// Replicas of the task stream (and the payload bucket) when this service creates it (3 on
    /// a NATS cluster; an existing stream is left as it is).
    #[arg(
        long = "nats-replicas",
        env = "WORKHOOK_NATS_REPLICAS",
        default_value_t = 1
    )]
    pub replicas: usize,

    /// Seconds JetStream drops a republished task (same Nats-Msg-Id) when the stream is created;
    /// past it, the registry still runs a task id only once.
    #[arg(
        long = "duplicate-window-secs",
        env = "WORKHOOK_DUPLICATE_WINDOW_SECS",
        default_value_t = DUPLICATE_WINDOW_SECS
    )]
    pub duplicate_window_secs: u64,
}

impl NatsConfig {
    pub fn layout(&self) -> Result<Layout, BadPrefix> {
        Layout::new(&self.prefix)
    }

    /// Creates the stream and its consumers if missing (see [`Layout::ensure_stream`]).
    pub async fn ensure_stream(
        &self,
        layout: &Layout,
        js: &jetstream::Context,
    ) -> Result<stream::Stream, async_nats::Error> {
        layout
            .ensure_stream(
                js,
                self.replicas,
                Duration::from_secs(self.duplicate_window_secs.max(1)),
            )
            .await
    }
}

/// The names of one installation's stream and subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
    stream: String,
}

#[derive(Debug, thiserror::Error)]
#[error("WORKHOOK_NATS_PREFIX {0:?} must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")]
pub struct BadPrefix(String);

impl Layout {
    pub fn new(prefix: &str) -> Result<Self, BadPrefix> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 64
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(BadPrefix(prefix.to_string()));
        }
        let stream = format!("{}_TASKS", prefix.to_ascii_uppercase().replace('-', "_"));
        Ok(Self {
            prefix: prefix.to_string(),
            stream,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The stream's name, e.g. `WORKHOOK_TASKS`.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The subjects of one priority's tasks: `<prefix>.tasks.p<priority>.>`.
    pub fn priority_tasks(&self, priority: u8) -> String {
        format!("{}.tasks.p{priority}.>", self.prefix)
    }

    /// Every task subject: `<prefix>.tasks.>`.
    pub fn all_tasks(&self) -> String {
        format!("{}.tasks.>", self.prefix)
    }

    /// The subject of the tasks of one code and priority that are named by their stream
    /// sequence: `<prefix>.tasks.p<priority>.<project>.<code>`.
    pub fn code_subject(&self, priority: u8, project_id: &str, code_id: &str) -> String {
        // By hand rather than with `format!`: this runs for every webhook.
        let mut s = String::with_capacity(
            self.prefix.len() + project_id.len() + code_id.len() + 16 + crate::ids::ID_LEN,
        );
        s.push_str(&self.prefix);
        s.push_str(".tasks.p");
        match priority {
            p @ 0..=9 => s.push(char::from(b'0' + p)),
            p => s.push_str(&p.to_string()),
        }
        s.push('.');
        s.push_str(project_id);
        s.push('.');
        s.push_str(code_id);
        s
    }

    /// The subject of a task that carries its own id: its code's, then the id.
    pub fn own_subject(
        &self,
        priority: u8,
        project_id: &str,
        code_id: &str,
        task_id: &str,
    ) -> String {
        let mut s = self.code_subject(priority, project_id, code_id);
        s.push('.');
        s.push_str(task_id);
        s
    }

    /// Where a delayed task waits to be recorded (no runner consumes it): the registry releases
    /// it to its priority's subject when it is due.
    pub fn delayed_subject(&self, project_id: &str, code_id: &str, task_id: &str) -> String {
        format!(
            "{}.tasks.delayed.{project_id}.{code_id}.{task_id}",
            self.prefix
        )
    }

    /// Every delayed task: what the recorder consumes.
    pub fn delayed_tasks(&self) -> String {
        format!("{}.tasks.delayed.>", self.prefix)
    }

    /// The subject filter of a task that carries its own id, whatever its priority and code, or
    /// while it is delayed: `<prefix>.tasks.*.<project>.*.<task>`.
    pub fn task_lookup(&self, project_id: &str, task_id: &str) -> String {
        format!("{}.tasks.*.{project_id}.*.{task_id}", self.prefix)
    }

    /// The subject to publish a new task on: its code's if it is named by its sequence, its own
    /// if it carries its id, the delayed one if it waits.
    pub fn subject_for(&self, envelope: &crate::Envelope) -> String {
        if envelope.delay > 0 {
            self.delayed_subject(&envelope.project_id, &envelope.code_id, &envelope.task_id)
        } else if envelope.task_id.is_empty() {
            self.code_subject(envelope.priority, &envelope.project_id, &envelope.code_id)
        } else {
            self.own_subject(
                envelope.priority,
                &envelope.project_id,
                &envelope.code_id,
                &envelope.task_id,
            )
        }
    }

    /// Core NATS subject (outside the stream) on which the registry announces that a task was
    /// cancelled, so the runner running it stops it at once.
    pub fn cancel_subject(&self, task_id: &str) -> String {
        format!("{}.control.cancel.{task_id}", self.prefix)
    }

    /// Every cancel announcement, for runners to subscribe to.
    pub fn all_cancels(&self) -> String {
        format!("{}.control.cancel.*", self.prefix)
    }

    /// The stream configuration. File storage, so an acknowledged webhook survives a NATS restart;
    /// interest retention: a task's message is gone once the runners have acked it (and, for a
    /// delayed task, the recorder has recorded it).
    pub fn stream_config(&self, replicas: usize, duplicate_window: Duration) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![self.all_tasks()],
            retention: stream::RetentionPolicy::Interest,
            storage: stream::StorageType::File,
            num_replicas: replicas.max(1),
            duplicate_window,
            ..Default::default()
        }
    }

    /// The object store bucket for payloads too large for a message: `<PREFIX>_PAYLOADS`.
    pub fn payload_bucket(&self) -> String {
        self.stream.replace("_TASKS", "_PAYLOADS")
    }

    /// The payload bucket, created if missing. Objects live 30 days: past the longest delay
    /// (7 days) and any retries.
    pub async fn ensure_payload_bucket(
        &self,
        js: &jetstream::Context,
        replicas: usize,
    ) -> Result<jetstream::object_store::ObjectStore, async_nats::Error> {
        let bucket = self.payload_bucket();
        if let Ok(store) = js.get_object_store(&bucket).await {
            return Ok(store);
        }
        Ok(js
            .create_object_store(jetstream::object_store::Config {
                bucket,
                description: Some("webhook bodies too large for a message".into()),
                max_age: Duration::from_secs(30 * 24 * 3600),
                storage: stream::StorageType::File,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await?)
    }

    /// The recorder's consumer: the delayed tasks, which the registry releases from their rows
    /// when they are due, so they must be recorded as they arrive. The other queued tasks wait in
    /// the stream, unrecorded, until a read or a runner's start records them.
    pub fn recorder_config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(RECORDER_CONSUMER.into()),
            filter_subject: self.delayed_tasks(),
            ack_policy: AckPolicy::Explicit,
            // Short: what a recorder that went away held is redelivered soon, and recording a
            // task twice is harmless (ON CONFLICT DO NOTHING).
            ack_wait: Duration::from_secs(5),
            max_ack_pending: 20_000,
            ..Default::default()
        }
    }

    /// The runners' consumer for one priority; `lease` is how long a runner may hold a task
    /// without renewing (its ack wait).
    pub fn runner_config(&self, priority: u8, lease: Duration) -> pull::Config {
        pull::Config {
            durable_name: Some(runner_consumer(priority)),
            filter_subject: self.priority_tasks(priority),
            ack_policy: AckPolicy::Explicit,
            ack_wait: lease,
            max_ack_pending: 100_000,
            ..Default::default()
        }
    }

    /// Creates the stream and every durable consumer if they do not exist yet. Every service
    /// calls this before it publishes or consumes, so the order in which they start does not
    /// matter. The consumers must exist before the first task is published: on an interest
    /// stream, a message that no consumer wants when the others have acked it is gone.
    pub async fn ensure_stream(
        &self,
        js: &jetstream::Context,
        replicas: usize,
        duplicate_window: Duration,
    ) -> Result<stream::Stream, async_nats::Error> {
        let stream = js
            .get_or_create_stream(self.stream_config(replicas, duplicate_window))
            .await?;
        // Created, or updated: before the recorder took only delayed tasks it took every task.
        // (The queued tasks it had not recorded yet are recorded by the next catch-up.)
        stream
            .create_consumer::<pull::Config>(self.recorder_config())
            .await?;
        for priority in PRIORITIES {
            stream
                .get_or_create_consumer::<pull::Config>(
                    &runner_consumer(priority),
                    self.runner_config(priority, DEFAULT_LEASE),
                )
                .await?;
        }
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let l = Layout::new("wh-test_1").unwrap();
        assert_eq!(l.stream(), "WH_TEST_1_TASKS");
        assert_eq!(l.payload_bucket(), "WH_TEST_1_PAYLOADS");
        assert_eq!(l.all_tasks(), "wh-test_1.tasks.>");
        assert_eq!(l.priority_tasks(1), "wh-test_1.tasks.p1.>");
        assert_eq!(runner_consumer(2), "runners-p2");
        let task = "6b158d44b99514aa49a1f287";
        assert_eq!(l.code_subject(2, "p", "c"), "wh-test_1.tasks.p2.p.c");
        assert_eq!(l.code_subject(12, "p", "c"), "wh-test_1.tasks.p12.p.c");
        assert_eq!(
            l.own_subject(0, "p", "c", task),
            format!("wh-test_1.tasks.p0.p.c.{task}")
        );
        assert_eq!(
            l.task_lookup("p", task),
            format!("wh-test_1.tasks.*.p.*.{task}")
        );
        assert_eq!(l.delayed_tasks(), "wh-test_1.tasks.delayed.>");
        assert_eq!(l.cancel_subject("t"), "wh-test_1.control.cancel.t");
        assert_eq!(
            l.delayed_subject("p", "c", "t"),
            "wh-test_1.tasks.delayed.p.c.t"
        );
        assert_eq!(l.all_cancels(), "wh-test_1.control.cancel.*");
    }

    #[test]
    fn a_task_goes_where_its_id_says() {
        let l = Layout::new("wh").unwrap();
        let mut e = crate::Envelope {
            task_id: String::new(),
            project_id: "p".into(),
            code_id: "c".into(),
            code_name: "n".into(),
            code_rev: 1,
            priority: 1,
            timeout: 60,
            delay: 0,
            label: None,
            cluster: "default".into(),
            received_at: 0,
            source: crate::envelope::Source::Webhook,
            retry_of: None,
            retry_count: 0,
            schedule_id: None,
            verified_by: None,
            request: None,
            payload_ref: None,
        };
        assert_eq!(l.subject_for(&e), "wh.tasks.p1.p.c");
        e.task_id = "t".into();
        assert_eq!(l.subject_for(&e), "wh.tasks.p1.p.c.t");
        e.delay = 5;
        assert_eq!(l.subject_for(&e), "wh.tasks.delayed.p.c.t");
    }

    #[test]
    fn prefixes_that_would_break_subjects_are_refused() {
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(65)] {
            assert!(Layout::new(bad).is_err(), "{bad:?}");
        }
    }
}
