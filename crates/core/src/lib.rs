//! What the workhook services share: ids, the task envelope carried in NATS headers, stream
//! naming, token hashing, logging and the shutdown signal.
#![forbid(unsafe_code)]

pub mod envelope;
pub mod ids;
pub mod metrics;
pub mod shutdown;
pub mod stream;
pub mod telemetry;
pub mod token;

pub use envelope::{Envelope, EnvelopeError, Source};
