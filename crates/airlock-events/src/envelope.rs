//! The event envelope (CONTRACT §4) and its lossless mapping to CloudEvents 1.0 structured JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

/// The `source` of every event Airlock publishes.
pub const SOURCE: &str = "airlock";

/// One event: what happened, to which subject, caused by what, in which correlation chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUIDv7, assigned when the event is written to the outbox (never at publish time), so
    /// every downstream deduplication (`processed`, `webhook-id`, `Nats-Msg-Id`) can key on it.
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: u32,
    /// The id of the originating request; shared by every event of one chain.
    pub correlation_id: String,
    /// The `event_id` of the event that caused this one; `None` for a chain's root.
    pub causation_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub source: String,
    /// What the event is about (a file id); also the per-key ordering key.
    pub subject: String,
    pub tenant: String,
    /// W3C trace context of the originating request, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub payload: Value,
}

/// Where a new event sits in its chain: correlation, cause, trace and tenant.
///
/// Handlers derive the context of the events they publish from the event they consume
/// ([`Envelope::context`]), so a whole chain shares one `correlation_id` and `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventContext {
    pub correlation_id: String,
    pub causation_id: Option<Uuid>,
    pub traceparent: Option<String>,
    pub tenant: String,
}

impl EventContext {
    /// The context of a chain's root event (a request).
    pub fn root(tenant: impl Into<String>, correlation_id: impl Into<String>, traceparent: Option<String>) -> Self {
        Self { correlation_id: correlation_id.into(), causation_id: None, traceparent, tenant: tenant.into() }
    }

    /// A new event of `event_type` version `version` about `subject`, in this context.
    pub fn event(&self, event_type: &str, version: u32, subject: impl Into<String>, payload: Value) -> Envelope {
        Envelope {
            event_id: Uuid::now_v7(),
            event_type: event_type.to_owned(),
            event_version: version,
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id,
            created_at: now_utc(),
            source: SOURCE.to_owned(),
            subject: subject.into(),
            tenant: self.tenant.clone(),
            traceparent: self.traceparent.clone(),
            payload,
        }
    }
}

impl Envelope {
    /// The context for events caused by this one.
    pub fn context(&self) -> EventContext {
        EventContext {
            correlation_id: self.correlation_id.clone(),
            causation_id: Some(self.event_id),
            traceparent: self.traceparent.clone(),
            tenant: self.tenant.clone(),
        }
    }

    /// A new event caused by this one (same chain, same subject unless changed).
    pub fn caused(&self, event_type: &str, version: u32, payload: Value) -> Envelope {
        self.context().event(event_type, version, self.subject.clone(), payload)
    }

    /// `<event_type>.v<version>`, the CloudEvents `type` and the catalog key.
    pub fn versioned_type(&self) -> String {
        format!("{}.v{}", self.event_type, self.event_version)
    }

    /// A string field of the payload, if present.
    pub fn payload_str(&self, field: &str) -> Option<&str> {
        self.payload.get(field).and_then(Value::as_str)
    }

    /// The CloudEvents 1.0 structured-mode JSON of this event.
    pub fn to_cloudevent(&self) -> Value {
        let mut ce = Map::new();
        ce.insert("specversion".into(), "1.0".into());
        ce.insert("id".into(), self.event_id.to_string().into());
        ce.insert("source".into(), self.source.clone().into());
        ce.insert("type".into(), self.versioned_type().into());
        ce.insert("subject".into(), self.subject.clone().into());
        ce.insert("time".into(), format_rfc3339(self.created_at).into());
        ce.insert("datacontenttype".into(), "application/json".into());
        ce.insert("correlationid".into(), self.correlation_id.clone().into());
        if let Some(c) = self.causation_id {
            ce.insert("causationid".into(), c.to_string().into());
        }
        if let Some(tp) = &self.traceparent {
            ce.insert("traceparent".into(), tp.clone().into());
        }
        ce.insert("tenant".into(), self.tenant.clone().into());
        ce.insert("data".into(), self.payload.clone());
        Value::Object(ce)
    }

    /// Parses a CloudEvents 1.0 structured-mode JSON produced by [`Envelope::to_cloudevent`].
    ///
    /// # Errors
    /// A message naming the missing or malformed attribute.
    pub fn from_cloudevent(ce: &Value) -> Result<Envelope, String> {
        let s = |k: &str| ce.get(k).and_then(Value::as_str).ok_or_else(|| format!("missing or non-string attribute `{k}`"));
        if s("specversion")? != "1.0" {
            return Err("specversion must be 1.0".into());
        }
        let ty = s("type")?;
        let (event_type, version) = split_versioned_type(ty).ok_or_else(|| format!("type `{ty}` is not `<name>.v<N>`"))?;
        let event_id = Uuid::parse_str(s("id")?).map_err(|e| format!("id: {e}"))?;
        let causation_id = match ce.get("causationid").and_then(Value::as_str) {
            Some(c) => Some(Uuid::parse_str(c).map_err(|e| format!("causationid: {e}"))?),
            None => None,
        };
        let created_at = OffsetDateTime::parse(s("time")?, &time::format_description::well_known::Rfc3339).map_err(|e| format!("time: {e}"))?;
        Ok(Envelope {
            event_id,
            event_type: event_type.to_owned(),
            event_version: version,
            correlation_id: s("correlationid")?.to_owned(),
            causation_id,
            created_at,
            source: s("source")?.to_owned(),
            subject: s("subject")?.to_owned(),
            tenant: s("tenant")?.to_owned(),
            traceparent: ce.get("traceparent").and_then(Value::as_str).map(str::to_owned),
            payload: ce.get("data").cloned().unwrap_or(Value::Null),
        })
    }
}

/// Splits `file.promoted.v1` into (`file.promoted`, 1).
pub fn split_versioned_type(s: &str) -> Option<(&str, u32)> {
    let (name, v) = s.rsplit_once(".v")?;
    let version = v.parse().ok()?;
    (!name.is_empty()).then_some((name, version))
}

/// Now, in UTC, truncated to microseconds (the precision the log stores).
pub fn now_utc() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let micros = now.unix_timestamp_nanos() / 1_000 * 1_000;
    OffsetDateTime::from_unix_timestamp_nanos(micros).unwrap_or(now)
}

/// RFC 3339 with a `Z` suffix.
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

pub(crate) fn to_micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

pub(crate) fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cloudevents_mapping_is_lossless() {
        let root = EventContext::root("acme", "corr-1", Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()));
        let first = root.event("file.uploaded", 1, "f1", json!({"a": 1}));
        let second = first.caused("file.promoted", 1, json!({"nested": {"x": [1, 2]}}));
        for ev in [first, second] {
            let ce = ev.to_cloudevent();
            assert_eq!(ce["type"], format!("{}.v1", ev.event_type));
            let back = Envelope::from_cloudevent(&ce).expect("parses");
            assert_eq!(back, ev);
        }
    }

    #[test]
    fn caused_events_share_the_chain() {
        let root = EventContext::root("t", "c", None);
        let a = root.event("upload.requested", 1, "s", json!({}));
        let b = a.caused("file.uploaded", 1, json!({}));
        assert_eq!(b.correlation_id, "c");
        assert_eq!(b.causation_id, Some(a.event_id));
        assert_eq!(b.subject, "s");
        assert!(b.event_id > a.event_id, "UUIDv7 ids are time-ordered");
    }

    #[test]
    fn versioned_types_split_at_the_last_v() {
        assert_eq!(split_versioned_type("file.variant.generated.v12"), Some(("file.variant.generated", 12)));
        assert_eq!(split_versioned_type("file.promoted"), None);
        assert_eq!(split_versioned_type(".v1"), None);
    }

    #[test]
    fn envelope_json_has_the_contract_fields() {
        let ev = EventContext::root("t", "c", None).event("file.deleted", 1, "s", json!({}));
        let v = serde_json::to_value(&ev).expect("serializes");
        for k in ["event_id", "event_type", "event_version", "correlation_id", "causation_id", "created_at", "source", "subject", "tenant", "payload"]
        {
            assert!(v.get(k).is_some(), "missing {k}");
        }
    }
}
