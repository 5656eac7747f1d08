//! The task envelope: everything a runner needs to know about a task besides its payload. It
//! travels in the NATS message headers, so the payload is the message body, byte for byte, and
//! the ingress never copies or re-encodes a webhook's body.

use async_nats::{header::HeaderName, HeaderMap};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

use crate::ids;

/// Every field a task always has, in one header (see [`Envelope::to_headers`]).
pub const TASK: &str = "Workhook-Task";
// The one-header-per-field form of earlier versions, still read.
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
pub const REQUEST_JSON: &str = "Workhook-Request-Json";
/// The same, percent-encoded (JSON that is not printable ASCII).
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
    /// Empty, as the ingress publishes a task that does not wait, until JetStream stores it:
    /// such a task is named by its stream sequence ([`ids::for_sequence`]), which its message's
    /// header carries as `-` and [`Envelope::from_message`] fills in. Every other task (one with
    /// a delivery id, a delayed one, one queued by the registry) carries its id.
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
    /// The headers that carry this envelope (the caller adds `Nats-Msg-Id`): one compact
    /// [`TASK`] header with every field a task always has, plus one header per optional field
    /// that is set. A webhook's message so carries two or three headers, not fourteen, which
    /// the ingress builds, NATS stores and every consumer parses once per task.
    pub fn to_headers(&self) -> HeaderMap {
        // A name made from a `&'static str` borrows it; one made from a `&str` is a copy.
        const fn name(n: &'static str) -> HeaderName {
            HeaderName::from_static(n)
        }
        let mut h = HeaderMap::new();
        h.insert(name(TASK), self.compact());
        if let Some(label) = &self.label {
            h.insert(name(LABEL), encode(label));
        }
        if let Some(id) = &self.retry_of {
            h.insert(name(RETRY_OF), id.as_str());
        }
        if let Some(id) = &self.schedule_id {
            h.insert(name(SCHEDULE_ID), id.as_str());
        }
        if let Some(scheme) = &self.verified_by {
            h.insert(name(VERIFIED_BY), encode(scheme));
        }
        if let Some(request) = &self.request {
            // JSON as the ingress writes it is printable ASCII: it goes as it is. Anything
            // else is percent-encoded under the older header name.
            if request.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                h.insert(name(REQUEST_JSON), request.as_str());
            } else {
                h.insert(name(REQUEST), encode(request));
            }
        }
        if let Some(object) = &self.payload_ref {
            h.insert(name(PAYLOAD_REF), object.as_str());
        }
        h
    }

    /// The JetStream message that queues this task: the envelope in its headers, with the
    /// trace context of `span` when traces are on, `payload` as the body, and `message_id`, if
    /// any, as its `Nats-Msg-Id` (JetStream drops a second publish of it within the duplicate
    /// window). A task whose id is fresh and random needs none: nothing else can publish it.
    pub fn queue_message(
        &self,
        payload: bytes::Bytes,
        message_id: Option<&str>,
        span: &tracing::Span,
    ) -> async_nats::jetstream::message::PublishMessage {
        let mut headers = self.to_headers();
        crate::telemetry::inject_span(span, &mut headers);
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload)
            .headers(headers);
        match message_id {
            Some(id) => message.message_id(id),
            None => message,
        }
    }

    /// The [`TASK`] header's value: `1` (the format), then the task id (`-` for one named by its
    /// stream sequence), the project and code ids, the
    /// revision, priority, timeout, delay, received_at, source and retry count, then the code
    /// name and the cluster percent-encoded, separated by single spaces.
    fn compact(&self) -> String {
        use std::fmt::Write;
        let mut v = String::with_capacity(128 + self.code_name.len() + self.cluster.len());
        let _ = write!(
            v,
            "1 {} {} {} {} {} {} {} {} {} {} {} {}",
            if self.task_id.is_empty() {
                "-"
            } else {
                &self.task_id
            },
            self.project_id,
            self.code_id,
            self.code_rev,
            self.priority,
            self.timeout,
            self.delay,
            self.received_at,
            self.source.as_str(),
            self.retry_count,
            utf8_percent_encode(&self.code_name, FREE_TEXT),
            utf8_percent_encode(&self.cluster, FREE_TEXT),
        );
        v
    }

    /// Reads an envelope back from the headers of the message JetStream stored at
    /// `stream_sequence`: the compact form of [`Envelope::to_headers`], or the
    /// one-header-per-field form that earlier versions published (messages of those may still be
    /// in a stream during an upgrade). A task named by its sequence gets its id here.
    pub fn from_message(
        h: Option<&HeaderMap>,
        stream_sequence: u64,
    ) -> Result<Self, EnvelopeError> {
        let h = h.ok_or(EnvelopeError::NoHeaders)?;
        // One pass over the headers: a `HeaderMap::get` by name copies the name and hashes it,
        // and this runs for every message the recorder and the runners read.
        let mut f = OptionalHeaders::default();
        for (name, values) in h.iter() {
            let slot = match name.as_ref() {
                TASK => &mut f.task,
                LABEL => &mut f.label,
                RETRY_OF => &mut f.retry_of,
                SCHEDULE_ID => &mut f.schedule_id,
                VERIFIED_BY => &mut f.verified_by,
                REQUEST_JSON => &mut f.request_json,
                REQUEST => &mut f.request,
                PAYLOAD_REF => &mut f.payload_ref,
                _ => continue,
            };
            *slot = values.first().map(|v| v.as_str());
        }
        let mut envelope = match f.task {
            Some(v) => Self::from_compact(v, stream_sequence)?,
            None => Self::from_field_headers(h)?,
        };
        let id = |v: Option<&str>, name: &'static str| -> Result<Option<String>, EnvelopeError> {
            match v {
                Some(v) if ids::is_id(v) => Ok(Some(v.to_string())),
                Some(_) => Err(EnvelopeError::Malformed(name)),
                None => Ok(None),
            }
        };
        let text = |v: Option<&str>, name: &'static str| -> Result<Option<String>, EnvelopeError> {
            v.map(|v| decode(v, name)).transpose()
        };
        envelope.label = text(f.label, LABEL)?;
        envelope.retry_of = id(f.retry_of, RETRY_OF)?;
        envelope.schedule_id = id(f.schedule_id, SCHEDULE_ID)?;
        envelope.verified_by = text(f.verified_by, VERIFIED_BY)?;
        envelope.request = match f.request_json {
            Some(v) => Some(v.to_string()),
            None => text(f.request, REQUEST)?,
        };
        envelope.payload_ref = id(f.payload_ref, PAYLOAD_REF)?;
        Ok(envelope)
    }

    /// Reads the envelope of a message a consumer delivered, named by the stream sequence its
    /// reply subject gives (a task named by its sequence is refused if the reply subject does
    /// not say where it was stored).
    pub fn from_delivered(message: &async_nats::jetstream::Message) -> Result<Self, EnvelopeError> {
        let sequence = message.info().map_or(0, |i| i.stream_sequence);
        Self::from_message(message.headers.as_ref(), sequence)
    }

    fn from_compact(v: &str, stream_sequence: u64) -> Result<Self, EnvelopeError> {
        let bad = EnvelopeError::Malformed(TASK);
        let mut fields = v.split(' ');
        let mut next = || fields.next().ok_or(EnvelopeError::Malformed(TASK));
        if next()? != "1" {
            return Err(bad);
        }
        let id = |v: &str| {
            if ids::is_id(v) {
                Ok(v.to_string())
            } else {
                Err(EnvelopeError::Malformed(TASK))
            }
        };
        fn num<T: std::str::FromStr>(v: &str) -> Result<T, EnvelopeError> {
            v.parse().map_err(|_| EnvelopeError::Malformed(TASK))
        }
        let task_id = match next()? {
            "-" => String::new(),
            v => id(v)?,
        };
        let mut envelope = Envelope {
            task_id,
            project_id: id(next()?)?,
            code_id: id(next()?)?,
            code_rev: num(next()?)?,
            priority: num(next()?)?,
            timeout: num(next()?)?,
            delay: num(next()?)?,
            received_at: num(next()?)?,
            source: Source::parse(next()?).ok_or(EnvelopeError::Malformed(TASK))?,
            retry_count: num(next()?)?,
            code_name: decode(next()?, TASK)?,
            cluster: decode(next()?, TASK)?,
            label: None,
            retry_of: None,
            schedule_id: None,
            verified_by: None,
            request: None,
            payload_ref: None,
        };
        if fields.next().is_some() || envelope.priority > 2 {
            return Err(bad);
        }
        if envelope.task_id.is_empty() {
            // 0 is no message's sequence: the caller could not tell where it was stored.
            if stream_sequence == 0 {
                return Err(bad);
            }
            envelope.task_id = ids::for_sequence(envelope.received_at, stream_sequence);
        }
        Ok(envelope)
    }

    /// The required fields of the one-header-per-field form.
    fn from_field_headers(h: &HeaderMap) -> Result<Self, EnvelopeError> {
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
            label: None,
            cluster: decode(get(CLUSTER)?, CLUSTER)?,
            received_at: num(get(RECEIVED_AT)?, RECEIVED_AT)?,
            source: Source::parse(get(SOURCE)?).ok_or(EnvelopeError::Malformed(SOURCE))?,
            retry_of: None,
            retry_count: match h.get(RETRY_COUNT) {
                Some(v) => num(v.as_str(), RETRY_COUNT)?,
                None => 0,
            },
            schedule_id: None,
            verified_by: None,
            request: None,
            payload_ref: None,
        })
    }

    /// Unix milliseconds from which the task may start.
    pub fn due_at(&self) -> i64 {
        self.received_at + i64::from(self.delay) * 1000
    }
}

/// The first value of each header [`Envelope::from_message`] reads besides the required fields
/// of the older one-header-per-field form.
#[derive(Default)]
struct OptionalHeaders<'a> {
    task: Option<&'a str>,
    label: Option<&'a str>,
    retry_of: Option<&'a str>,
    schedule_id: Option<&'a str>,
    verified_by: Option<&'a str>,
    request_json: Option<&'a str>,
    request: Option<&'a str>,
    payload_ref: Option<&'a str>,
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, FREE_TEXT).to_string()
}

#[cfg(test)]
fn field_headers(e: &Envelope) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(TASK_ID, e.task_id.as_str());
    h.insert(PROJECT_ID, e.project_id.as_str());
    h.insert(CODE_ID, e.code_id.as_str());
    h.insert(CODE_NAME, encode(&e.code_name));
    h.insert(CODE_REV, e.code_rev.to_string());
    h.insert(PRIORITY, e.priority.to_string());
    h.insert(TIMEOUT, e.timeout.to_string());
    h.insert(DELAY, e.delay.to_string());
    h.insert(CLUSTER, encode(&e.cluster));
    h.insert(RECEIVED_AT, e.received_at.to_string());
    h.insert(SOURCE, e.source.as_str());
    if e.retry_count > 0 {
        h.insert(RETRY_COUNT, e.retry_count.to_string());
    }
    for (name, value) in [
        (LABEL, e.label.as_deref().map(encode)),
        (RETRY_OF, e.retry_of.clone()),
        (SCHEDULE_ID, e.schedule_id.clone()),
        (VERIFIED_BY, e.verified_by.as_deref().map(encode)),
        (REQUEST, e.request.as_deref().map(encode)),
        (PAYLOAD_REF, e.payload_ref.clone()),
    ] {
        if let Some(v) = value {
            h.insert(name, v);
        }
    }
    h
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

    fn without_options(e: &Envelope) -> Envelope {
        Envelope {
            label: None,
            retry_of: None,
            retry_count: 0,
            schedule_id: None,
            verified_by: None,
            request: None,
            payload_ref: None,
            ..e.clone()
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
        assert_eq!(Envelope::from_message(Some(&h), 7).unwrap(), e);
        let bare = without_options(&e);
        let h = bare.to_headers();
        assert_eq!(h.iter().count(), 1, "only the compact header: {h:?}");
        assert_eq!(Envelope::from_message(Some(&h), 7).unwrap(), bare);
    }

    #[test]
    fn a_task_named_by_its_sequence_gets_its_id_from_the_message() {
        let e = Envelope {
            task_id: String::new(),
            ..sample()
        };
        let h = e.to_headers();
        assert!(h.get(TASK).unwrap().as_str().starts_with("1 - "));
        let read = Envelope::from_message(Some(&h), 42).unwrap();
        assert_eq!(read.task_id, ids::for_sequence(e.received_at, 42));
        assert_eq!(ids::sequence_of(&read.task_id), Some((1_700_000_000, 42)));
        assert_eq!(
            Envelope {
                task_id: String::new(),
                ..read
            },
            e
        );
        assert_eq!(
            Envelope::from_message(Some(&h), 0),
            Err(EnvelopeError::Malformed(TASK))
        );
        // A task that carries its id keeps it, wherever it is stored.
        let named = sample();
        let read = Envelope::from_message(Some(&named.to_headers()), 42).unwrap();
        assert_eq!(read.task_id, named.task_id);
    }

    #[test]
    fn printable_request_json_travels_as_it_is() {
        let mut e = without_options(&sample());
        e.request =
            Some(r#"{"method":"POST","headers":{"user-agent":"GitHub-Hookshot 1"}}"#.into());
        let h = e.to_headers();
        assert_eq!(
            h.get(REQUEST_JSON).map(|v| v.as_str()),
            e.request.as_deref()
        );
        assert!(h.get(REQUEST).is_none());
        assert_eq!(Envelope::from_message(Some(&h), 7).unwrap(), e);
    }

    #[test]
    fn reads_the_one_header_per_field_form_of_earlier_versions() {
        let e = sample();
        assert_eq!(
            Envelope::from_message(Some(&field_headers(&e)), 7).unwrap(),
            e
        );
        let bare = without_options(&e);
        assert_eq!(
            Envelope::from_message(Some(&field_headers(&bare)), 7).unwrap(),
            bare
        );
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        assert_eq!(
            Envelope::from_message(None, 7),
            Err(EnvelopeError::NoHeaders)
        );
        let e = sample();
        let compact = e.compact();
        let tampered = [
            compact.replacen("1 ", "2 ", 1),
            compact.replace(&e.task_id, "../../etc"),
            compact.replace(" 2 3600 ", " 7 3600 "),
            compact.replace(" 3600 ", " x "),
            format!("{compact} extra"),
            compact.rsplit_once(' ').unwrap().0.to_string(),
        ];
        for value in tampered {
            let mut h = e.to_headers();
            h.insert(TASK, value.as_str());
            assert_eq!(
                Envelope::from_message(Some(&h), 7),
                Err(EnvelopeError::Malformed(TASK)),
                "{value}"
            );
        }
        let mut h = field_headers(&e);
        h.insert(PRIORITY, "7");
        assert_eq!(
            Envelope::from_message(Some(&h), 7),
            Err(EnvelopeError::Malformed(PRIORITY))
        );
        let mut h = field_headers(&e);
        h.insert(TASK_ID, "../../etc");
        assert_eq!(
            Envelope::from_message(Some(&h), 7),
            Err(EnvelopeError::Malformed(TASK_ID))
        );
        let mut h = e.to_headers();
        h.insert(RETRY_OF, "../x");
        assert_eq!(
            Envelope::from_message(Some(&h), 7),
            Err(EnvelopeError::Malformed(RETRY_OF))
        );
    }

    #[test]
    fn due_time_adds_the_delay() {
        assert_eq!(sample().due_at(), 1_700_000_010_123);
    }
}
