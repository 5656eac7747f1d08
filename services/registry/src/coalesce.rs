//! Coalescing of the runners' hottest calls. Every task costs one StartTask and one FinishTask;
//! made one at a time, each is its own transaction, round trips and commit (WAL flush) in
//! Postgres. Calls that arrive while the batches in flight (at most [`BATCHES_IN_FLIGHT`]) are
//! being written wait for one of them to end and then go together, as one call of a Postgres
//! function (migration 0009) that updates each task by its key: one round trip and one commit
//! for the batch. Under load the batches grow by themselves; a lone call goes at once, no
//! linger, so an idle system answers as fast as before.
//!
//! A batch takes only the common case (a queued task that may start now, recorded or not, since
//! queued tasks are recorded only when read; a running attempt that completed). Every other call,
//! and every call of a batch whose Postgres call failed, takes the one-call path in `store`,
//! which decides the rare cases (a call without the payload for a task not yet recorded, a lease
//! to take over, a paused code, max_concurrency, retries) exactly as it always did.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Semaphore};
use workhook_proto as pb;

use crate::error::RegistryError;
use crate::store::{self, Start};

/// The most calls one statement takes.
pub const MAX_BATCH: usize = 128;

/// A call waiting in a batch: its request and where its answer goes.
pub type Pending<Req, Resp> = (Req, oneshot::Sender<Resp>);

/// Batches written at once by one coalescer. One at a time, a batch's commit (a WAL flush)
/// left the runners' calls waiting with the CPU idle: the end-to-end benchmark spent 78% of
/// its time inside StartTask batches, one after the other, at 4 calls a batch. With two, the
/// next batch is built and sent while the last one's commit is flushed, and Postgres can flush
/// both at once. Batches lock their rows in task id order, so two of them never deadlock.
pub const BATCHES_IN_FLIGHT: usize = 2;

/// Feeds calls to one task that runs `batch` over whatever has queued up, at most
/// `in_flight` batches at a time. `batch` answers every call it is given (spawning the rare
/// slow ones rather than holding up the next batch).
pub struct Coalescer<Req, Resp> {
    calls: mpsc::UnboundedSender<Pending<Req, Resp>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Coalescer<Req, Resp> {
    pub fn spawn<F, Fut>(in_flight: usize, mut batch: F) -> Self
    where
        F: FnMut(Vec<Pending<Req, Resp>>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (calls, mut queued) = mpsc::unbounded_channel();
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            // A slot first, then the calls: what arrives while every slot is taken gathers
            // into the next batch.
            while let Ok(slot) = slots.clone().acquire_owned().await {
                let mut taken = Vec::with_capacity(MAX_BATCH);
                if queued.recv_many(&mut taken, MAX_BATCH).await == 0 {
                    break;
                }
                // On a task of its own, so that a batch that panicked fails only its own calls
                // (their answers are dropped: the runners retry) and not every call after it.
                let run = tokio::spawn(batch(taken));
                tokio::spawn(async move {
                    if let Err(e) = run.await {
                        tracing::error!(error = %e, "a batch of calls failed");
                    }
                    drop(slot);
                });
            }
        });
        Self { calls }
    }

    /// Makes one call; `None` if the batching task is gone (the registry is stopping) or the
    /// batch the call was in failed without answering it.
    pub async fn call(&self, request: Req) -> Option<Resp> {
        let (answer, answered) = oneshot::channel();
        self.calls.send((request, answer)).ok()?;
        answered.await.ok()
    }
}

/// A runner's StartTask, as the batch needs it.
pub struct StartCall {
    pub envelope: pb::Envelope,
    pub payload: Option<bytes::Bytes>,
    pub runner_id: String,
    pub lease_ms: i64,
}

pub type StartAnswer = Result<Start, RegistryError>;

/// Starts every call's task that is queued, due, of an unpaused code without max_concurrency,
/// in one call of Postgres; the others (and all of them if that call fails) take
/// `store::start_task`, each on its own task.
pub async fn start_batch(pool: &PgPool, mut calls: Vec<Pending<StartCall, StartAnswer>>) {
    // Rows are locked in task id order: the same order in every registry replica, so two
    // batches that share a task wait for each other rather than deadlock. A task asked for twice
    // in one batch goes to the one-call path after the batch: it then sees the batch's start and
    // defers, rather than being started twice.
    calls.sort_unstable_by(|(a, _), (b, _)| a.envelope.task_id.cmp(&b.envelope.task_id));
    let mut first: Vec<Pending<StartCall, StartAnswer>> = Vec::with_capacity(calls.len());
    let mut again = Vec::new();
    for call in calls {
        let repeated = first
            .last()
            .is_some_and(|(c, _)| c.envelope.task_id == call.0.envelope.task_id);
        // A call without the payload cannot record its task: the one-call path asks for it.
        if repeated || call.0.payload.is_none() {
            again.push(call);
        } else {
            first.push(call);
        }
    }
    let tokens: Vec<String> = first
        .iter()
        .map(|_| workhook_core::token::new_token())
        .collect();
    let starts: Vec<store::BatchStart<'_>> = first
        .iter()
        .zip(&tokens)
        .map(|((c, _), token)| store::BatchStart {
            queued: store::Queued {
                envelope: &c.envelope,
                payload: c.payload.as_deref().unwrap_or_default(),
            },
            runner_id: &c.runner_id,
            lease_ms: c.lease_ms,
            token,
        })
        .collect();
    let began = std::time::Instant::now();
    let started = store::start_batch(pool, &starts).await;
    let took = began.elapsed();
    drop(starts);
    let mut started: HashMap<String, pb::Run> = match started {
        Ok(runs) => runs,
        Err(e) => {
            tracing::warn!(error = %e, n = first.len(), "batched StartTask failed; starting one by one");
            HashMap::new()
        }
    };
    tracing::debug!(
        calls = first.len() + again.len(),
        started = started.len(),
        ms = took.as_secs_f64() * 1000.0,
        "StartTask batch"
    );
    for ((call, answer), token) in first.into_iter().zip(tokens) {
        match started.remove(&call.envelope.task_id) {
            Some(mut run) => {
                run.task_token = token;
                let _ = answer.send(Ok(Start::Run(run)));
            }
            None => start_alone(pool, call, answer),
        }
    }
    for (call, answer) in again {
        start_alone(pool, call, answer);
    }
}

fn start_alone(pool: &PgPool, call: StartCall, answer: oneshot::Sender<StartAnswer>) {
    let pool = pool.clone();
    tokio::spawn(async move {
        let decision = store::start_task(
            &pool,
            &call.envelope,
            call.payload.as_deref(),
            &call.runner_id,
            call.lease_ms,
        )
        .await;
        let _ = answer.send(decision);
    });
}

/// A runner's FinishTask for a completed attempt.
pub struct CompleteCall {
    pub task_id: String,
    pub attempt: i32,
    pub msg: String,
    pub error_class: String,
}

/// Whether the result was recorded, and the task's status afterwards.
pub type CompleteAnswer = Result<(bool, String), RegistryError>;

/// Records every call's completion in one call of Postgres; a call whose attempt no longer
/// holds its task is answered with the task's current status.
pub async fn complete_batch(pool: &PgPool, mut calls: Vec<Pending<CompleteCall, CompleteAnswer>>) {
    // Locked in task id order, as in start_batch.
    calls.sort_unstable_by(|(a, _), (b, _)| a.task_id.cmp(&b.task_id));
    let began = std::time::Instant::now();
    let recorded = store::complete_batch(
        pool,
        calls.iter().map(|(c, _)| store::BatchComplete {
            task_id: &c.task_id,
            attempt: c.attempt,
            msg: &c.msg,
            error_class: &c.error_class,
        }),
    )
    .await;
    let took = began.elapsed();
    let recorded = match recorded {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, n = calls.len(), "batched FinishTask failed; finishing one by one");
            for (call, answer) in calls {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let done = store::finish_task(
                        &pool,
                        &call.task_id,
                        call.attempt,
                        "complete",
                        &call.msg,
                        &call.error_class,
                    )
                    .await;
                    let _ = answer.send(done.map(|f| (f.recorded, f.status)));
                });
            }
            return;
        }
    };
    tracing::debug!(
        calls = calls.len(),
        recorded = recorded.len(),
        ms = took.as_secs_f64() * 1000.0,
        "FinishTask batch"
    );
    for (call, answer) in calls {
        if recorded.get(&call.task_id) == Some(&call.attempt) {
            let _ = answer.send(Ok((true, "complete".to_string())));
            continue;
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            let current = store::current_status(&pool, &call.task_id).await;
            let _ = answer.send(current.map(|status| (false, status)));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Doubles each request, recording the size of every batch; a request of 0 panics.
    fn doubler(in_flight: usize, sizes: Arc<Mutex<Vec<usize>>>) -> Coalescer<u32, u32> {
        Coalescer::spawn(in_flight, move |calls: Vec<Pending<u32, u32>>| {
            let sizes = sizes.clone();
            async move {
                sizes.lock().unwrap().push(calls.len());
                // Long enough for the calls made meanwhile to gather into the next batch.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                for (n, answer) in calls {
                    assert_ne!(n, 0, "a request of 0 fails its batch");
                    let _ = answer.send(n * 2);
                }
            }
        })
    }

    // With time paused, the batch's sleep ends only once every other task is waiting.
    #[tokio::test(start_paused = true)]
    async fn calls_made_while_a_batch_runs_go_together_and_each_gets_its_answer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let coalescer = Arc::new(doubler(1, sizes.clone()));
        let first = {
            let c = coalescer.clone();
            tokio::spawn(async move { c.call(1).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let rest: Vec<_> = (2..=40)
            .map(|n| {
                let c = coalescer.clone();
                tokio::spawn(async move { (n, c.call(n).await) })
            })
            .collect();
        assert_eq!(first.await.unwrap(), Some(2));
        for call in rest {
            let (n, answer) = call.await.unwrap();
            assert_eq!(answer, Some(n * 2));
        }
        // The lone first call went at once; the 39 made while it ran, in one batch.
        assert_eq!(*sizes.lock().unwrap(), [1, 39]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_that_panics_fails_only_its_own_calls() {
        let coalescer = doubler(1, Arc::default());
        assert_eq!(coalescer.call(0).await, None);
        assert_eq!(coalescer.call(3).await, Some(6));
    }

    #[tokio::test(start_paused = true)]
    async fn with_two_in_flight_a_second_batch_goes_while_the_first_runs() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let coalescer = Arc::new(doubler(2, sizes.clone()));
        let call = |n: u32, after_ms: u64| {
            let c = coalescer.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(after_ms)).await;
                (n, c.call(n).await)
            })
        };
        // 1 goes alone; 2 goes alone too, while 1 runs; 3..=9 wait for a free slot and then
        // go together.
        let mut calls = vec![call(1, 0), call(2, 5)];
        calls.extend((3..=9).map(|n| call(n, 10)));
        for c in calls {
            let (n, answer) = c.await.unwrap();
            assert_eq!(answer, Some(n * 2));
        }
        assert_eq!(*sizes.lock().unwrap(), [1, 1, 7]);
    }
}
