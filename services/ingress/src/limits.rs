//! What keeps the ingress answering under bursts: a bound on requests in flight (load shedding),
//! a deadline on every request, and per-project rate limits. Each refusal is immediate and clear
//! (503 or 429 with Retry-After): never a hang.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::{
    extract::{Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::error::ApiError;
use crate::state::App;

/// Sheds load: past `max_in_flight` requests being handled, new ones are answered 503 at once.
/// Then bounds every request's time (code uploads excepted: big packages on slow links).
pub async fn guard(State(app): State<App>, request: Request, next: Next) -> Response {
    let Ok(_permit) = app.in_flight.clone().try_acquire_owned() else {
        return ApiError::Unavailable("Too many requests in flight; retry shortly".into())
            .into_response();
    };
    let upload = request.method() == Method::POST && request.uri().path().ends_with("/codes");
    if upload || app.request_timeout.is_zero() {
        return next.run(request).await;
    }
    match tokio::time::timeout(app.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            ApiError::Unavailable("The request took too long; retry shortly".into()).into_response()
        }
    }
}

/// A token bucket per project: `rate` requests a second, bursts up to `burst`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before idle ones are dropped.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// `rate` 0 means unlimited.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `project`, or says how long until one is available.
    pub fn check(&self, project: &str) -> Result<(), Duration> {
        self.check_at(project, Instant::now())
    }

    fn check_at(&self, project: &str, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // A project seen before is found by its `&str`; only a new one costs a `String`.
        if let Some(bucket) = buckets.get_mut(project) {
            return self.take(bucket, now);
        }
        if buckets.len() >= MAX_BUCKETS {
            let (rate, burst) = (self.rate, self.burst);
            // A bucket that has refilled completely holds no state worth keeping.
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(project.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        self.take(bucket, now)
    }

    /// Refills `bucket` for the time since it was last used, then takes a token from it.
    fn take(&self, bucket: &mut Bucket, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(10.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at("p", t0).is_ok());
        }
        let wait = limiter.check_at("p", t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Other projects have their own bucket.
        assert!(limiter.check_at("q", t0).is_ok());
        // 100 ms later, one more token.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.check_at("p", t1).is_ok());
        assert!(limiter.check_at("p", t1).is_err());
    }

    #[test]
    fn a_zero_rate_is_unlimited() {
        let limiter = RateLimiter::new(0.0, 1.0);
        for _ in 0..1000 {
            assert!(limiter.check("p").is_ok());
        }
    }
}
