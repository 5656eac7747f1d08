//! The recorder: consumes every delayed task from the stream and records it in Postgres in
//! batches, acknowledging a message only once its row is committed. A delayed task waits in its
//! row, not in a consumer: the registry releases it to the runners when it is due
//! (`delays.rs`). Other queued tasks are recorded only when read (`catchup.rs`) or started.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures_util::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use workhook_core::{stream::RECORDER_CONSUMER, Envelope};
use workhook_proto as pb;

use crate::store::{self, Queued};

/// How long the recorder waits for more messages to fill a batch once it holds one.
const BATCH_LINGER: Duration = Duration::from_millis(5);

pub async fn consumer(
    stream: &jetstream::stream::Stream,
    layout: &workhook_core::stream::Layout,
) -> Result<PullConsumer, async_nats::Error> {
    Ok(stream
        .get_or_create_consumer(RECORDER_CONSUMER, layout.recorder_config())
        .await?)
}

/// Runs until `shutdown`; a batch in hand is still written and acknowledged.
pub async fn run(
    pool: PgPool,
    consumer: PullConsumer,
    batch_size: usize,
    recorded: prometheus_client::metrics::counter::Counter,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        if let Err(e) = consume(&pool, &consumer, batch_size, &recorded, &shutdown).await {
            tracing::warn!(error = %e, "recorder interrupted; resuming");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }
}

async fn consume(
    pool: &PgPool,
    consumer: &PullConsumer,
    batch_size: usize,
    recorded: &prometheus_client::metrics::counter::Counter,
    shutdown: &CancellationToken,
) -> Result<(), async_nats::Error> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch_size)
        .heartbeat(Duration::from_secs(2))
        .expires(Duration::from_secs(5))
        .messages()
        .await?;
    let mut batch = Vec::with_capacity(batch_size);
    loop {
        let first = tokio::select! {
            m = messages.next() => m,
            _ = shutdown.cancelled() => {
                // Record what was already delivered to this recorder rather than leave it to
                // be redelivered after the ack wait.
                while let Ok(Some(Ok(m))) =
                    tokio::time::timeout(Duration::from_millis(100), messages.next()).await
                {
                    batch.push(m);
                    if batch.len() >= batch_size {
                        recorded.inc_by(record(pool, &mut batch).await);
                    }
                }
                recorded.inc_by(record(pool, &mut batch).await);
                return Ok(());
            }
        };
        match first {
            Some(m) => batch.push(m?),
            None => return Ok(()),
        }
        let linger = tokio::time::sleep(BATCH_LINGER);
        tokio::pin!(linger);
        while batch.len() < batch_size {
            tokio::select! {
                m = messages.next() => match m {
                    Some(m) => batch.push(m?),
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        recorded.inc_by(record(pool, &mut batch).await);
    }
}

/// Records a batch; returns how many tasks it recorded (new, or already recorded by a runner
/// that got there first).
async fn record(pool: &PgPool, batch: &mut Vec<jetstream::Message>) -> u64 {
    let mut envelopes = Vec::with_capacity(batch.len());
    let mut keep = Vec::with_capacity(batch.len());
    for m in batch.drain(..) {
        match Envelope::from_delivered(&m) {
            Ok(e) => {
                envelopes.push(pb::Envelope::from(&e));
                keep.push(m);
            }
            Err(e) => {
                // Nothing can run it; terminating keeps it from being redelivered forever.
                tracing::error!(error = %e, subject = %m.subject, "unreadable task message; dropped");
                let _ = m.ack_with(AckKind::Term).await;
            }
        }
    }
    if keep.is_empty() {
        return 0;
    }
    let queued: Vec<Queued<'_>> = envelopes
        .iter()
        .zip(&keep)
        .map(|(envelope, m)| Queued {
            envelope,
            payload: &m.payload,
        })
        .collect();
    match store::record_queued(pool, &queued).await {
        Ok(_written) => {
            for m in &keep {
                if let Err(e) = m.ack().await {
                    tracing::warn!(error = %e, "recorder ack failed; the message will be redelivered");
                }
            }
            // Counted as recorded even when a runner recorded the task first.
            keep.len() as u64
        }
        Err(e) => {
            tracing::warn!(error = %e, n = keep.len(), "recording queued tasks failed; retrying");
            for m in &keep {
                let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
            0
        }
    }
}
