//! What every handler shares: the registry client, the publisher and the caches in front of the
//! registry.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use axum::http::HeaderMap;
use bytes::Bytes;
use tonic::transport::Channel;
use workhook_core::{ids, stream::Layout, Envelope};
use workhook_proto::{self as pb, registry_client::RegistryClient};

use crate::cache::{SingleFlight, TtlCache};
use crate::error::{ApiError, ApiResult};
use crate::verify::WebhookVerify;

/// How a code's webhooks are verified.
#[derive(Debug, Clone)]
pub enum Verification {
    /// The code has no webhook_verify: webhooks are taken on the token alone.
    None,
    Configured(Box<WebhookVerify>),
    /// The stored config no longer parses: every webhook fails verification (fail closed).
    Broken,
}

/// What the ingress needs to know of a code to queue a task for it.
#[derive(Debug, Clone)]
pub struct CodeRef {
    pub id: String,
    pub name: String,
    pub rev: i32,
    pub default_priority: u8,
    pub verification: Verification,
}

/// Where a task's id came from, which decides whether its message needs a `Nats-Msg-Id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskIdKind {
    /// Derived from the sender's delivery id: a redelivery is the same task, and JetStream's
    /// duplicate window drops its second publish.
    FromDelivery,
    /// New: named by its stream sequence, or random for a task that waits; no other publish
    /// can carry it, so JetStream has nothing to deduplicate (and keeps no id in its window for
    /// it).
    Fresh,
}

pub struct AppState {
    pub registry: RegistryClient<Channel>,
    /// The registry's channel, for health checks.
    pub channel: Channel,
    /// Set once shutdown starts, so readiness fails while requests drain.
    pub draining: std::sync::atomic::AtomicBool,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub layout: Layout,
    pub publish_timeout: Duration,
    pub max_body_bytes: usize,
    /// Bodies above this go to the payload bucket; also the JSON requests' limit.
    pub max_json_bytes: usize,
    /// The payload bucket (bodies too large for a message).
    pub payloads: jetstream::object_store::ObjectStore,
    pub max_package_bytes: usize,
    /// (project id, token hash) -> the token grants the project.
    tokens: TtlCache<(String, [u8; 32]), ()>,
    /// "project/name" -> the code's current revision.
    codes: TtlCache<String, Arc<CodeRef>>,
    /// The token checks and code lookups on their way to the registry, by cache key.
    token_checks: SingleFlight<(String, [u8; 32]), ApiResult<()>>,
    code_lookups: SingleFlight<String, ApiResult<pb::Code>>,
    /// Permits for requests in flight (load shedding).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub request_timeout: Duration,
    pub rate_limiter: crate::limits::RateLimiter,
    pub metrics: crate::metrics::IngressMetrics,
}

pub type App = Arc<AppState>;

/// How long a cached token check or code lookup may stand in for the registry while the
/// registry cannot be reached (a restart, a network blip): webhooks keep being accepted.
const STALE_FOR: Duration = Duration::from_secs(300);

impl AppState {
    pub fn new(
        registry: RegistryClient<Channel>,
        channel: Channel,
        nats: async_nats::Client,
        js: jetstream::Context,
        layout: Layout,
        payloads: jetstream::object_store::ObjectStore,
        config: &crate::Config,
    ) -> Self {
        let cache_ttl = Duration::from_millis(config.cache_ttl_ms);
        Self {
            registry,
            channel,
            draining: std::sync::atomic::AtomicBool::new(false),
            nats,
            js,
            layout,
            publish_timeout: Duration::from_millis(config.publish_timeout_ms.max(1)),
            max_body_bytes: config.max_body_bytes,
            max_json_bytes: config.inline_payload_bytes.min(config.max_body_bytes),
            payloads,
            max_package_bytes: config.max_package_bytes,
            tokens: TtlCache::new(cache_ttl, 100_000),
            codes: TtlCache::new(cache_ttl, 100_000),
            token_checks: SingleFlight::new(),
            code_lookups: SingleFlight::new(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1))),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            metrics: crate::metrics::IngressMetrics::new(),
            rate_limiter: crate::limits::RateLimiter::new(
                config.rate_limit,
                config
                    .rate_limit_burst
                    .unwrap_or(config.rate_limit)
                    .max(1.0),
            ),
        }
    }

    /// Takes one task's worth of the project's rate limit.
    pub fn rate_limit(&self, project_id: &str) -> ApiResult<()> {
        self.rate_limiter
            .check(project_id)
            .map_err(ApiError::TooManyRequests)
    }

    /// Checks that the request's token (`Authorization: OAuth T`, or `?oauth=T`) grants
    /// `project_id`.
    pub async fn authorize(
        &self,
        project_id: &str,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> ApiResult<()> {
        self.check_token(project_id, None, headers, query_token)
            .await
    }

    /// For a code's webhook: a project token, or a webhook token of that code.
    pub async fn authorize_webhook(
        &self,
        project_id: &str,
        code_name: &str,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> ApiResult<()> {
        self.check_token(project_id, Some(code_name), headers, query_token)
            .await
    }

    async fn check_token(
        &self,
        project_id: &str,
        code_name: Option<&str>,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> ApiResult<()> {
        let token = token_from(headers)
            .or(query_token)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let hash = workhook_core::token::hash_token(token);
        let project_key = (project_id.to_string(), hash);
        if self.tokens.get(&project_key).is_some() {
            return Ok(());
        }
        // What a webhook token was confirmed for: "project/code".
        let key = match code_name {
            Some(name) => (format!("{project_id}/{name}"), hash),
            None => project_key,
        };
        if code_name.is_some() && self.tokens.get(&key).is_some() {
            return Ok(());
        }
        if !workhook_core::ids::is_id(project_id) {
            return Err(ApiError::Unauthorized);
        }
        let checked = self
            .token_checks
            .call(&key, || {
                let mut registry = self.registry.clone();
                let request = pb::AuthenticateRequest {
                    project_id: project_id.to_string(),
                    token: token.to_string(),
                    task_id: None,
                    code_name: code_name.map(str::to_string),
                };
                async move {
                    registry
                        .authenticate(request)
                        .await
                        .map(|_| ())
                        .map_err(|s| ApiError::from_registry(s, "project"))
                }
            })
            .await;
        match checked {
            Ok(_) => {
                self.tokens.insert(key, ());
                Ok(())
            }
            // The registry is away: a token it confirmed recently is still good.
            Err(ApiError::Unavailable(_))
                if self.tokens.get_stale(&key, STALE_FOR).is_some()
                    || self
                        .tokens
                        .get_stale(&(project_id.to_string(), hash), STALE_FOR)
                        .is_some() =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Like `authorize`, but also accepts the token scoped to `task_id` that its worker got
    /// (not cached: progress calls are rare, and the token dies with the attempt).
    pub async fn authorize_for_task(
        &self,
        project_id: &str,
        task_id: &str,
        headers: &HeaderMap,
    ) -> ApiResult<()> {
        match self.authorize(project_id, headers, None).await {
            Err(ApiError::Unauthorized) => {}
            other => return other,
        }
        let token = token_from(headers).ok_or(ApiError::Unauthorized)?;
        self.registry
            .clone()
            .authenticate(pb::AuthenticateRequest {
                project_id: project_id.to_string(),
                token: token.to_string(),
                task_id: Some(task_id.to_string()),
                code_name: None,
            })
            .await
            .map_err(|s| ApiError::from_registry(s, "project"))?;
        Ok(())
    }

    /// The current revision of a project's code, by name.
    pub async fn code(&self, project_id: &str, name: &str) -> ApiResult<Arc<CodeRef>> {
        let key = format!("{project_id}/{name}");
        if let Some(code) = self.codes.get(&key) {
            return Ok(code);
        }
        let looked_up = self
            .code_lookups
            .call(&key, || {
                let mut registry = self.registry.clone();
                let request = pb::GetCodeByNameRequest {
                    project_id: project_id.to_string(),
                    name: name.to_string(),
                };
                async move {
                    registry
                        .get_code_by_name(request)
                        .await
                        .map(|code| code.into_inner())
                        .map_err(|s| ApiError::from_registry(s, "Code"))
                }
            })
            .await;
        let code = match looked_up {
            Ok(code) => code,
            // The registry is away: the revision it named recently is still the one to run.
            Err(ApiError::Unavailable(msg)) => {
                return self
                    .codes
                    .get_stale(&key, STALE_FOR)
                    .ok_or(ApiError::Unavailable(msg))
            }
            Err(e) => return Err(e),
        };
        let verification = match code.webhook_verify.as_deref() {
            None => Verification::None,
            Some(text) => match serde_json::from_str(text)
                .ok()
                .and_then(|v| WebhookVerify::from_json(&v).ok())
            {
                Some(v) => Verification::Configured(Box::new(v)),
                None => {
                    tracing::error!(code_id = %code.id, "stored webhook_verify does not parse; refusing its webhooks");
                    Verification::Broken
                }
            },
        };
        let code = Arc::new(CodeRef {
            id: code.id,
            name: code.name,
            rev: code.rev,
            default_priority: code.default_priority.clamp(0, 2) as u8,
            verification,
        });
        self.codes.insert(key, code.clone());
        Ok(code)
    }

    pub fn forget_code(&self, project_id: &str, name: &str) {
        self.codes.remove(&format!("{project_id}/{name}"));
    }

    /// Publishes a task whose payload may be too large for a message: such a payload is first
    /// stored in the payload bucket, named by the task's id (a redelivery overwrites it) or by a
    /// new one for a task named by its sequence, and the message carries its name. Returns the
    /// task's id, as [`AppState::publish`] does.
    pub async fn publish_large(
        &self,
        envelope: &mut Envelope,
        payload: Bytes,
        id: TaskIdKind,
    ) -> ApiResult<String> {
        if payload.len() <= self.max_json_bytes {
            return self.publish(envelope, payload, id).await;
        }
        let object = if envelope.task_id.is_empty() {
            ids::new_id()
        } else {
            envelope.task_id.clone()
        };
        let stored = tokio::time::timeout(
            self.publish_timeout * 4,
            self.payloads.put(object.as_str(), &mut payload.as_ref()),
        )
        .await;
        match stored {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, %object, "storing a large payload failed");
                return Err(ApiError::Unavailable(
                    "The queue is unavailable; retry shortly".into(),
                ));
            }
            Err(_) => {
                return Err(ApiError::Unavailable(
                    "The queue did not answer in time; retry shortly".into(),
                ))
            }
        }
        envelope.payload_ref = Some(object);
        self.publish(envelope, Bytes::new(), id).await
    }

    /// Publishes a task and waits for JetStream's acknowledgement: only then is it durable. Any
    /// failure, including no answer within the publish timeout, is a 503 so the sender retries.
    /// Returns the task's id: the envelope's, or, for a task named by its stream sequence (an
    /// envelope without one), the id of the sequence the acknowledgement gives.
    pub async fn publish(
        &self,
        envelope: &Envelope,
        payload: Bytes,
        id: TaskIdKind,
    ) -> ApiResult<String> {
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            return Err(ApiError::Unavailable(
                "The queue is unavailable; retry shortly".into(),
            ));
        }
        let subject = self.layout.subject_for(envelope);
        let message_id = match id {
            TaskIdKind::FromDelivery => Some(envelope.task_id.as_str()),
            TaskIdKind::Fresh => None,
        };
        let message = envelope.queue_message(payload, message_id, &tracing::Span::current());
        let started = std::time::Instant::now();
        // The JetStream context bounds both halves by the publish timeout (handing the message
        // to the connection, and its PubAck): no timer of our own on top of those two.
        let acked = match self.js.send_publish(subject, message).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        self.metrics
            .publish_seconds
            .observe(started.elapsed().as_secs_f64());
        match acked {
            Ok(ack) if envelope.task_id.is_empty() => {
                Ok(ids::for_sequence(envelope.received_at, ack.sequence))
            }
            Ok(_) => Ok(envelope.task_id.clone()),
            Err(e) => {
                // A task named by its sequence has no id yet: name its project and code.
                tracing::warn!(
                    error = %e,
                    project_id = %envelope.project_id,
                    code = %envelope.code_name,
                    task_id = %envelope.task_id,
                    "publish failed"
                );
                let msg = match e.kind() {
                    PublishErrorKind::TimedOut => "The queue did not answer in time; retry shortly",
                    _ => "The queue is unavailable; retry shortly",
                };
                Err(ApiError::Unavailable(msg.into()))
            }
        }
    }
}

/// The token of `Authorization: OAuth T` (the clients' spelling; `Bearer` is accepted too).
fn token_from(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("oauth") || scheme.eq_ignore_ascii_case("bearer"))
        .then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_authorization_header() {
        let mut h = HeaderMap::new();
        assert_eq!(token_from(&h), None);
        h.insert("authorization", "OAuth abc".parse().unwrap());
        assert_eq!(token_from(&h), Some("abc"));
        h.insert("authorization", "Bearer xyz".parse().unwrap());
        assert_eq!(token_from(&h), Some("xyz"));
        h.insert("authorization", "Basic Zm9v".parse().unwrap());
        assert_eq!(token_from(&h), None);
    }
}
