//! The catch-up: records, on demand, the queued tasks that wait in the stream.
//!
//! A queued task is not written to Postgres when it is published: at the publish rate that write
//! was most of what a webhook cost (see docs/BENCHMARKS.md). Until something reads it, the stream
//! alone holds it. A runner's StartTask records it from the call; a lookup by id reads it from
//! the stream, at the sequence its id names or on its own subject, and records that one task
//! (`find_queued`); a call over many tasks (a list, the stats, cancel-all) first runs a
//! catch-up, which records every task published since the last one, from a short-lived consumer
//! that starts where the last catch-up stopped (`stream_recorded`, migration 0010). A task that
//! left the stream meanwhile was acked by a runner, which started it and so recorded it.

use std::time::Duration;

use async_nats::jetstream::{
    consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer},
    message::StreamMessage,
    stream::{LastRawMessageErrorKind, RawMessageErrorKind, Stream},
};
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use sqlx::PgPool;
use workhook_core::{ids, stream::Layout, Envelope};
use workhook_proto as pb;

use crate::store::{self, Queued};

/// Messages a catch-up takes, and records, at a time.
const BATCH: usize = 500;

pub struct CatchUp {
    pub pool: PgPool,
    pub stream: Stream,
    pub layout: Layout,
    /// Tasks recorded from the stream, by catch-ups and lookups.
    pub recorded: Counter,
    /// One catch-up at a time in this process: the next one starts where it stopped.
    running: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("reading the stream: {0}")]
    Nats(#[from] async_nats::Error),
    #[error("recording: {0}")]
    Store(#[from] crate::error::RegistryError),
    #[error("the stream holds {0} more tasks but delivered none")]
    Stalled(u64),
}

impl From<sqlx::Error> for CatchUpError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl CatchUp {
    pub fn new(pool: PgPool, stream: Stream, layout: Layout, recorded: Counter) -> Self {
        Self {
            pool,
            stream,
            layout,
            recorded,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Records every queued task the stream held when called that is not recorded yet; returns
    /// how many it recorded. Another registry replica may record the same tasks at the same
    /// time: each is recorded once.
    pub async fn run(&self) -> Result<u64, CatchUpError> {
        let info = self.stream.get_info().await.map_err(nats)?;
        let target = info.state.last_sequence;
        let _one = self.running.lock().await;
        // A stream deleted and created again numbers its messages from 1 again.
        let created = info.created.unix_timestamp_nanos() as i64;
        let done: Option<(i64,)> = sqlx::query_as(
            "SELECT seq FROM stream_recorded WHERE stream = $1 AND stream_created_ns = $2",
        )
        .bind(self.layout.stream())
        .bind(created)
        .fetch_optional(&self.pool)
        .await?;
        let from = done
            .map_or(0, |(seq,)| seq as u64 + 1)
            .max(info.state.first_sequence);
        if from > target || info.state.messages == 0 {
            return Ok(0);
        }
        let consumer = self
            .stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ack_policy: AckPolicy::None,
                filter_subject: self.layout.all_tasks(),
                memory_storage: true,
                // Removed by the server if this process goes away before it deletes it.
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(nats)?;
        let name = consumer.cached_info().name.clone();
        let recorded = self.record_through(&consumer, target, created).await;
        if let Err(e) = self.stream.delete_consumer(&name).await {
            tracing::debug!(error = %e, "deleting the catch-up's consumer; the server will");
        }
        recorded
    }

    async fn record_through(
        &self,
        consumer: &PullConsumer,
        target: u64,
        created: i64,
    ) -> Result<u64, CatchUpError> {
        let mut recorded = 0;
        let mut empty_fetches = 0;
        loop {
            let mut messages = consumer
                .fetch()
                .max_messages(BATCH)
                .messages()
                .await
                .map_err(nats)?;
            let mut batch = Vec::with_capacity(BATCH);
            // What the consumer still held after the last message taken.
            let mut pending = None;
            let mut last_seq = None;
            let mut reached = false;
            while let Some(m) = messages.next().await {
                let m = m.map_err(nats)?;
                let info = m.info().map_err(nats)?;
                let seq = info.stream_sequence;
                pending = Some(info.pending);
                if seq > target {
                    reached = true;
                    break;
                }
                reached |= seq == target;
                last_seq = Some(seq);
                match Envelope::from_message(m.headers.as_ref(), seq) {
                    Ok(e) => batch.push((pb::Envelope::from(&e), m)),
                    // Nothing can run it: the runners drop it when they take it.
                    Err(e) => {
                        tracing::warn!(error = %e, seq, "unreadable task message; not recorded")
                    }
                }
            }
            // The same order as a batch of starts, so that the two never deadlock.
            batch.sort_unstable_by(|(a, _), (b, _)| a.task_id.cmp(&b.task_id));
            let queued: Vec<Queued<'_>> = batch
                .iter()
                .map(|(envelope, m)| Queued {
                    envelope,
                    payload: &m.payload,
                })
                .collect();
            if !queued.is_empty() {
                recorded += store::record_queued(&self.pool, &queued).await?;
            }
            // Done once the target is passed or the consumer holds nothing more. A fetch does not
            // wait, so one that brought nothing asks the consumer; one that keeps bringing
            // nothing while it holds messages is an error, and the next call tries again.
            let done = reached
                || match pending {
                    Some(left) => left == 0,
                    None => {
                        let left = consumer.get_info().await.map_err(nats)?.num_pending;
                        empty_fetches += 1;
                        if left > 0 && empty_fetches >= 3 {
                            return Err(CatchUpError::Stalled(left));
                        }
                        left == 0
                    }
                };
            // Every message up to here is recorded or was acked by the runners (which
            // recorded its task when they started it).
            let upto = if done { Some(target) } else { last_seq };
            if let Some(seq) = upto {
                self.save(created, seq).await?;
            }
            if done {
                break;
            }
        }
        self.recorded.inc_by(recorded);
        Ok(recorded)
    }

    async fn save(&self, created: i64, seq: u64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO stream_recorded (stream, stream_created_ns, seq) VALUES ($1, $2, $3)
             ON CONFLICT (stream) DO UPDATE SET
                seq = CASE WHEN stream_recorded.stream_created_ns = EXCLUDED.stream_created_ns
                           THEN GREATEST(stream_recorded.seq, EXCLUDED.seq)
                           ELSE EXCLUDED.seq END,
                stream_created_ns = EXCLUDED.stream_created_ns",
        )
        .bind(self.layout.stream())
        .bind(created)
        .bind(seq as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Looks for one task in the stream and records it if it is there. False when the stream
    /// does not hold it (it does not exist, or it was recorded and then left the stream), or when
    /// either id is not an id (so nothing a caller passes can widen the subject filter).
    ///
    /// A task named by its sequence (`ids::sequence_of`) is read at that sequence, and is the
    /// task if the message there is the project's and, named by that sequence, has the id (so it
    /// carries no id of its own and was received in the id's second). Any other task has a
    /// subject of its own (`Layout::task_lookup`). Both are one read of the stream's indexes,
    /// whatever the stream holds.
    pub async fn find_queued(&self, project_id: &str, task_id: &str) -> Result<bool, CatchUpError> {
        if !ids::is_id(project_id) || !ids::is_id(task_id) {
            return Ok(false);
        }
        if let Some((_, sequence)) = ids::sequence_of(task_id) {
            match self.stream.get_raw_message(sequence).await {
                Ok(message) => {
                    if let Some(envelope) = self.envelope_of(&message, project_id, task_id) {
                        return self.record_one(&envelope, &message.payload).await;
                    }
                }
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(nats(e)),
            }
        }
        let own = self.layout.task_lookup(project_id, task_id);
        let message = match self.stream.get_last_raw_message_by_subject(&own).await {
            Ok(m) => m,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(false),
            Err(e) => return Err(nats(e)),
        };
        match self.envelope_of(&message, project_id, task_id) {
            Some(envelope) => self.record_one(&envelope, &message.payload).await,
            None => Ok(false),
        }
    }

    /// The envelope of a stored message if it is task `task_id` of project `project_id`.
    fn envelope_of(
        &self,
        message: &StreamMessage,
        project_id: &str,
        task_id: &str,
    ) -> Option<pb::Envelope> {
        match Envelope::from_message(Some(&message.headers), message.sequence) {
            Ok(e) if e.task_id == task_id && e.project_id == project_id => {
                Some(pb::Envelope::from(&e))
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, seq = message.sequence, "unreadable task message; not recorded");
                None
            }
        }
    }

    async fn record_one(
        &self,
        envelope: &pb::Envelope,
        payload: &[u8],
    ) -> Result<bool, CatchUpError> {
        let recorded =
            store::record_queued_from_stream(&self.pool, &[Queued { envelope, payload }]).await?;
        self.recorded.inc_by(recorded);
        Ok(true)
    }
}

fn nats(e: impl Into<async_nats::Error>) -> CatchUpError {
    CatchUpError::Nats(e.into())
}
