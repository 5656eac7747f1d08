//! The ingress's series.

use std::sync::Arc;

use prometheus_client::{
    metrics::{counter::Counter, histogram::Histogram},
    registry::Registry,
};
use workhook_core::metrics::{latency_histogram, CounterFamily};

use crate::error::ApiError;

pub struct IngressMetrics {
    pub registry: Arc<Registry>,
    /// Webhooks by outcome: `accepted`, or the reason they were refused.
    pub webhooks: CounterFamily,
    /// The `accepted` series of `webhooks`, looked up once: it counts every webhook queued.
    accepted: Counter,
    /// Time from sending a task to JetStream to its PubAck.
    pub publish_seconds: Histogram,
}

impl IngressMetrics {
    pub fn new() -> Self {
        let mut registry = workhook_core::metrics::registry();
        let webhooks = CounterFamily::default();
        registry.register(
            "webhooks",
            "Webhooks received, by outcome (accepted, or why they were refused)",
            webhooks.clone(),
        );
        let publish_seconds = latency_histogram();
        registry.register(
            "publish_seconds",
            "Time from publishing a task to JetStream's acknowledgement",
            publish_seconds.clone(),
        );
        let accepted = webhooks
            .get_or_create(&vec![("outcome", "accepted".to_string())])
            .clone();
        Self {
            registry: Arc::new(registry),
            webhooks,
            accepted,
            publish_seconds,
        }
    }

    pub fn webhook(&self, outcome: Result<(), &ApiError>) {
        let reason = match outcome {
            Ok(()) => {
                self.accepted.inc();
                return;
            }
            Err(ApiError::Unauthorized) => "unauthorized",
            Err(ApiError::NotFound(_)) => "not_found",
            Err(ApiError::BadRequest(_)) => "bad_request",
            Err(ApiError::NotAcceptable(_)) => "not_acceptable",
            Err(ApiError::PayloadTooLarge(_)) => "too_large",
            Err(ApiError::TooManyRequests(_)) => "rate_limited",
            Err(ApiError::Unavailable(_)) => "unavailable",
            Err(ApiError::Internal(_)) => "internal",
        };
        self.webhooks
            .get_or_create(&vec![("outcome", reason.to_string())])
            .inc();
    }
}
