//! Ships a worker's output to the registry as it is written, in batches, never holding more
//! than one batch in memory. Once the registry says the task's log is full, output is still
//! read (so the worker never blocks on a full pipe) but no longer sent.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use workhook_proto as pb;

/// A batch is sent when it holds this much, or when it is this old.
const BATCH_BYTES: usize = 64 * 1024;
const BATCH_AGE: Duration = Duration::from_millis(200);
/// How long a batch is retried while the registry cannot be reached before it is given up.
const SEND_PATIENCE: Duration = Duration::from_secs(60);

/// One read from a worker's stdout or stderr.
pub struct Output {
    pub stream: pb::LogStream,
    pub data: Bytes,
}

pub struct LogShipper {
    pub registry: crate::Registry,
    pub task_id: String,
    pub attempt: i32,
}

impl LogShipper {
    /// Runs until every sender of `rx` is gone and the last batch is sent.
    pub async fn run(self, mut rx: mpsc::Receiver<Output>) {
        let mut batch: Vec<pb::LogEntry> = Vec::new();
        let mut size = 0usize;
        let mut full = false;
        let mut tick = tokio::time::interval(BATCH_AGE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(out) if !full => {
                        size += out.data.len();
                        push(&mut batch, out);
                        if size >= BATCH_BYTES {
                            full = self.send(&mut batch).await;
                            size = 0;
                        }
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = tick.tick() => {
                    if !batch.is_empty() && !full {
                        full = self.send(&mut batch).await;
                        size = 0;
                    }
                }
            }
        }
        if !batch.is_empty() && !full {
            full = self.send(&mut batch).await;
        }
        tracing::debug!(log_full = full, "the worker's output is shipped");
    }

    /// Sends and empties the batch; returns whether the task's log is now full.
    async fn send(&self, batch: &mut Vec<pb::LogEntry>) -> bool {
        let entries = std::mem::take(batch);
        let mut delay = Duration::from_millis(100);
        // Through a registry restart the output waits (and the worker, once the channel is full,
        // waits on its pipe) rather than being dropped.
        let give_up = tokio::time::Instant::now() + SEND_PATIENCE;
        while tokio::time::Instant::now() < give_up {
            let req = pb::AppendLogRequest {
                task_id: self.task_id.clone(),
                attempt: self.attempt,
                entries: entries.clone(),
            };
            match self.registry.clone().append_log(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    return r.truncated || !r.accepted;
                }
                Err(e) => {
                    tracing::warn!(task_id = %self.task_id, error = %e, "sending log failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        tracing::error!(task_id = %self.task_id, "log output lost: the registry did not take it");
        false
    }
}

/// Appends to the batch, merging with the previous entry of the same stream.
fn push(batch: &mut Vec<pb::LogEntry>, out: Output) {
    if let Some(last) = batch.last_mut() {
        if last.stream == out.stream as i32 {
            let mut merged = BytesMut::with_capacity(last.data.len() + out.data.len());
            merged.extend_from_slice(&last.data);
            merged.extend_from_slice(&out.data);
            last.data = merged.freeze();
            return;
        }
    }
    batch.push(pb::LogEntry {
        stream: out.stream as i32,
        data: out.data,
    });
}

/// The last `cap` bytes written to a stream: what becomes `msg` when a worker fails.
pub struct Tail {
    cap: usize,
    buf: std::collections::VecDeque<u8>,
}

impl Tail {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            buf: std::collections::VecDeque::with_capacity(cap),
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        let data = if data.len() > self.cap {
            &data[data.len() - self.cap..]
        } else {
            data
        };
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }

    /// The tail as text, with surrounding whitespace trimmed.
    pub fn text(&self) -> String {
        let bytes: Vec<u8> = self.buf.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        text.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::new(8);
        t.push(b"hello ");
        t.push(b"world\n");
        assert_eq!(t.text(), "o world");
        t.push(b"0123456789abc");
        assert_eq!(t.text(), "56789abc");
    }

    #[test]
    fn batches_merge_consecutive_output_of_one_stream() {
        let mut b = Vec::new();
        let out = |s, d: &'static [u8]| Output {
            stream: s,
            data: Bytes::from_static(d),
        };
        push(&mut b, out(pb::LogStream::Stdout, b"a"));
        push(&mut b, out(pb::LogStream::Stdout, b"b"));
        push(&mut b, out(pb::LogStream::Stderr, b"c"));
        push(&mut b, out(pb::LogStream::Stdout, b"d"));
        let got: Vec<(i32, &[u8])> = b.iter().map(|e| (e.stream, &e.data[..])).collect();
        assert_eq!(
            got,
            vec![
                (pb::LogStream::Stdout as i32, &b"ab"[..]),
                (pb::LogStream::Stderr as i32, &b"c"[..]),
                (pb::LogStream::Stdout as i32, &b"d"[..]),
            ]
        );
    }
}
