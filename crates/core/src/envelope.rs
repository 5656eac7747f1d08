//! The task envelope: everything a runner needs to know about a task besides its payload. It
//! travels in the NATS message headers, so the payload is the message body, byte for byte, and
//! the ingress never copies or re-encodes a webhook's body.

use async_nats::HeaderMap;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

use crate::ids;

pub const TASK_ID: &str = "Workhook-Task-Id";
pub const PROJECT_ID: &str = "Workhook-Project-Id";
pub const CODE_ID: &str = "Workhook-Code-Id";
pub const CODE_NAME: &str = "Workhook-Code-Name";
pub const CODE_REV: &str = "Workhook-Code-Rev";
pub const PRIORITY: &str = "Workhook-Priority";
pub const TIMEOUT: &str = "Workhook-Timeout";
pub const DELAY: &str = "Workhook-Delay";
pub const LABEL: &str = "Workhook-Label";
pub const CLUSTER: &str = "Workhook-Cluster";
pub const RECEIVED_AT: &str = "Workhook-Received-At";
pub const SOURCE: &str = "Workhook-Source";
pub const RETRY_OF: &str = "Workhook-Retry-Of";
pub const RETRY_COUNT: &str = "Workhook-Retry-Count";
pub const SCHEDULE_ID: &str = "Workhook-Schedule-Id";
pub const VERIFIED_BY: &str = "Workhook-Verified-By";
/// The webhook request's method, query, content type and headers, as JSON, for the worker.
pub const REQUEST: &str = "Workhook-Request";
/// The payload is not the message body but this object in the payload bucket.
pub const PAYLOAD_REF: &str = "Workhook-Payload-Ref";

/// Free-text values (names, labels) are percent-encoded so that no byte can break a header.
const FREE_TEXT: &AsciiSet = &CONTROLS.add(b'%').add(b' ');

/// Where a task came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Webhook,
    Api,
    Retry,
    Schedule,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::Api => "api",
            Source::Retry => "retry",
            Source::Schedule => "schedule",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "webhook" => Some(Source::Webhook),
            "api" => Some(Source::Api),
            "retry" => Some(Source::Retry),
            "schedule" => Some(Source::Schedule),
            _ => None,
        }
    }
}

/// A queued task, as the ingress publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub task_id: String,
    pub project_id: String,
    pub code_id: String,
    pub code_name: String,
    pub code_rev: i32,
    /// 0, 1 or 2 (highest).
    pub priority: u8,
    /// Seconds.
    pub timeout: u32,
    /// Seconds after `received_at` before the task may start.
    pub delay: u32,
    pub label: Option<String>,
    pub cluster: String,
    /// Unix milliseconds at which the ingress accepted the task.
    pub received_at: i64,
    pub source: Source,
    /// The task this one retries.
    pub retry_of: Option<String>,
    /// How many retries precede this task (0 for a first run).
    pub retry_count: u32,
    /// The schedule that queued this task.
    pub schedule_id: Option<String>,
    /// The signature scheme that verified the webhook.
    pub verified_by: Option<String>,
    /// What the worker sees of the webhook request (JSON), besides its body.
    pub request: Option<String>,
    /// The object holding the payload when it is too large for the message.
    pub payload_ref: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("the message has no headers")]
    NoHeaders,
    #[error("header {0} is missing")]
    Missing(&'static str),
    #[error("header {0} is malformed")]
    Malformed(&'static str),
}

impl Envelope {
    /// The headers that carry this envelope (the caller adds `Nats-Msg-Id`).
    pub fn to_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TASK_ID, self.task_id.as_str());
        h.insert(PROJECT_ID, self.project_id.as_str());
        h.insert(CODE_ID, self.code_id.as_str());
        h.insert(CODE_NAME, encode(&self.code_name).as_str());
        h.insert(CODE_REV, self.code_rev.to_string().as_str());
        h.insert(PRIORITY, self.priority.to_string().as_str());
        h.insert(TIMEOUT, self.timeout.to_string().as_str());
        h.insert(DELAY, self.delay.to_string().as_str());
        if let Some(label) = &self.label {
            h.insert(LABEL, encode(label).as_str());
        }
        h.insert(CLUSTER, encode(&self.cluster).as_str());
        h.insert(RECEIVED_AT, self.received_at.to_string().as_str());
        h.insert(SOURCE, self.source.as_str());
        if let Some(id) = &self.retry_of {
            h.insert(RETRY_OF, id.as_str());
        }
        if self.retry_count > 0 {
            h.insert(RETRY_COUNT, self.retry_count.to_string().as_str());
        }
        if let Some(id) = &self.schedule_id {
            h.insert(SCHEDULE_ID, id.as_str());
        }
        if let Some(scheme) = &self.verified_by {
            h.insert(VERIFIED_BY, encode(scheme).as_str());
        }
        if let Some(request) = &self.request {
            h.insert(REQUEST, encode(request).as_str());
        }
        if let Some(object) = &self.payload_ref {
            h.insert(PAYLOAD_REF, object.as_str());
        }
        h
    }

    /// Reads an envelope back from a message's headers.
    pub fn from_headers(h: Option<&HeaderMap>) -> Result<Self, EnvelopeError> {
        let h = h.ok_or(EnvelopeError::NoHeaders)?;
        let get = |name: &'static str| -> Result<&str, EnvelopeError> {
            h.get(name)
                .map(|v| v.as_str())
                .ok_or(EnvelopeError::Missing(name))
        };
        let id = |name: &'static str| -> Result<String, EnvelopeError> {
            let v = get(name)?;
            if ids::is_id(v) {
                Ok(v.to_string())
            } else {
                Err(EnvelopeError::Malformed(name))
            }
        };
        fn num<T: std::str::FromStr>(v: &str, name: &'static str) -> Result<T, EnvelopeError> {
            v.parse().map_err(|_| EnvelopeError::Malformed(name))
        }
        let priority: u8 = num(get(PRIORITY)?, PRIORITY)?;
        if priority > 2 {
            return Err(EnvelopeError::Malformed(PRIORITY));
        }
        Ok(Envelope {
            task_id: id(TASK_ID)?,
            project_id: id(PROJECT_ID)?,
            code_id: id(CODE_ID)?,
            code_name: decode(get(CODE_NAME)?, CODE_NAME)?,
            code_rev: num(get(CODE_REV)?, CODE_REV)?,
            priority,
            timeout: num(get(TIMEOUT)?, TIMEOUT)?,
            delay: num(get(DELAY)?, DELAY)?,
            label: match h.get(LABEL) {
                Some(v) => Some(decode(v.as_str(), LABEL)?),
                None => None,
            },
            cluster: decode(get(CLUSTER)?, CLUSTER)?,
            received_at: num(get(RECEIVED_AT)?, RECEIVED_AT)?,
            source: Source::parse(get(SOURCE)?).ok_or(EnvelopeError::Malformed(SOURCE))?,
            retry_of: match h.get(RETRY_OF) {
                Some(_) => Some(id(RETRY_OF)?),
                None => None,
            },
            retry_count: match h.get(RETRY_COUNT) {
                Some(v) => num(v.as_str(), RETRY_COUNT)?,
                None => 0,
            },
            schedule_id: match h.get(SCHEDULE_ID) {
                Some(_) => Some(id(SCHEDULE_ID)?),
                None => None,
            },
            verified_by: match h.get(VERIFIED_BY) {
                Some(v) => Some(decode(v.as_str(), VERIFIED_BY)?),
                None => None,
            },
            request: match h.get(REQUEST) {
                Some(v) => Some(decode(v.as_str(), REQUEST)?),
                None => None,
            },
            payload_ref: match h.get(PAYLOAD_REF) {
                Some(_) => Some(id(PAYLOAD_REF)?),
                None => None,
            },
        })
    }

    /// Unix milliseconds from which the task may start.
    pub fn due_at(&self) -> i64 {
        self.received_at + i64::from(self.delay) * 1000
    }
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, FREE_TEXT).to_string()
}

fn decode(s: &str, name: &'static str) -> Result<String, EnvelopeError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| EnvelopeError::Malformed(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            task_id: ids::new_id(),
            project_id: ids::new_id(),
            code_id: ids::new_id(),
            code_name: "hello worker\r\n%ünï".into(),
            code_rev: 3,
            priority: 2,
            timeout: 3600,
            delay: 10,
            label: Some("nightly: a\nb".into()),
            cluster: "default".into(),
            received_at: 1_700_000_000_123,
            source: Source::Webhook,
            retry_of: Some(ids::new_id()),
            retry_count: 2,
            schedule_id: Some(ids::new_id()),
            verified_by: Some("github".into()),
            request: Some("{\"headers\":{\"x\":\"a b\\r\\n\"}}".into()),
            payload_ref: Some(ids::new_id()),
        }
    }

    #[test]
    fn round_trips_through_headers_even_with_awkward_text() {
        let e = sample();
        let h = e.to_headers();
        for (_, values) in h.iter() {
            for v in values {
                assert!(!v.as_str().contains(['\r', '\n']), "{v:?}");
            }
        }
        assert_eq!(Envelope::from_headers(Some(&h)).unwrap(), e);
        let mut no_label = e.clone();
        no_label.label = None;
        no_label.retry_of = None;
        no_label.retry_count = 0;
        no_label.schedule_id = None;
        no_label.verified_by = None;
        no_label.request = None;
        no_label.payload_ref = None;
        assert_eq!(
            Envelope::from_headers(Some(&no_label.to_headers())).unwrap(),
            no_label
        );
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        assert_eq!(Envelope::from_headers(None), Err(EnvelopeError::NoHeaders));
        let mut h = sample().to_headers();
        h.insert(PRIORITY, "7");
        assert_eq!(
            Envelope::from_headers(Some(&h)),
            Err(EnvelopeError::Malformed(PRIORITY))
        );
        let mut h = sample().to_headers();
        h.insert(TASK_ID, "../../etc");
        assert_eq!(
            Envelope::from_headers(Some(&h)),
            Err(EnvelopeError::Malformed(TASK_ID))
        );
    }

    #[test]
    fn due_time_adds_the_delay() {
        assert_eq!(sample().due_at(), 1_700_000_010_123);
    }
}
