//! Subscriptions: which events a named consumer receives (type patterns and attribute filters),
//! and how its deliveries are retried, leased and ordered.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::Envelope;

/// A named durable subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionSpec {
    /// Unique and stable: deliveries and the idempotency record are keyed on it.
    pub name: String,
    /// Event type patterns: `file.promoted`, `file.promoted.v1` (one version), `file.*`, `*`.
    pub patterns: Vec<String>,
    /// Attribute filters, all of which must match: `tenant`, `subject` and `event_type` test the
    /// envelope, any other key the payload's top-level field. A value that is an array matches
    /// any of its elements.
    #[serde(default)]
    pub filter: BTreeMap<String, Value>,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// How long a claimed delivery stays with its worker before another may take it.
    #[serde(default = "default_lease", with = "millis")]
    pub lease: Duration,
    /// Per-key (`subject`) ordering: a delivery waits while an earlier one of its key is
    /// pending, leased or waiting for a retry. A dead letter no longer holds its key back.
    #[serde(default)]
    pub ordered: bool,
    /// Deliveries processed at once by one worker process.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// When the subscription is first created, deliver the events published since this time
    /// (a backfill); `None` starts from now.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub start_from: Option<OffsetDateTime>,
}

fn default_lease() -> Duration {
    Duration::from_secs(30)
}

fn default_concurrency() -> usize {
    4
}

/// Exponential backoff with full jitter, capped, and a maximum number of attempts after which
/// the delivery becomes a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    #[serde(with = "millis")]
    pub base: Duration,
    #[serde(with = "millis")]
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 8, base: Duration::from_millis(500), cap: Duration::from_secs(300) }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempts + 1`: a random point in `[d/2, d]` where
    /// `d = min(cap, base * 2^(attempts-1))` ("equal jitter": never zero, never synchronized).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let d = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let half = d / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

impl SubscriptionSpec {
    /// A subscription with default retry, lease, concurrency, unordered, starting now.
    pub fn new(name: impl Into<String>, patterns: &[&str]) -> Self {
        Self {
            name: name.into(),
            patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
            filter: BTreeMap::new(),
            retry: RetryPolicy::default(),
            lease: default_lease(),
            ordered: false,
            concurrency: default_concurrency(),
            start_from: None,
        }
    }

    /// Does this subscription receive `ev`?
    pub fn matches(&self, ev: &Envelope) -> bool {
        matches(&self.patterns, &self.filter, ev)
    }
}

/// Does an event match type patterns and attribute filters?
pub fn matches(patterns: &[String], filter: &BTreeMap<String, Value>, ev: &Envelope) -> bool {
    patterns.iter().any(|p| pattern_matches(p, &ev.event_type, ev.event_version)) && filter_matches(filter, ev)
}

/// `*` matches all; `ctx.*` every type under `ctx.`; `name.vN` one version; `name` all versions.
pub fn pattern_matches(pattern: &str, event_type: &str, version: u32) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix(".*") {
        return event_type.len() > prefix.len() && event_type.starts_with(prefix) && event_type.as_bytes()[prefix.len()] == b'.';
    }
    if let Some((name, v)) = crate::envelope::split_versioned_type(pattern)
        && name == event_type
    {
        return v == version;
    }
    pattern == event_type
}

fn filter_matches(filter: &BTreeMap<String, Value>, ev: &Envelope) -> bool {
    filter.iter().all(|(key, want)| {
        let have: Option<Value> = match key.as_str() {
            "tenant" => Some(Value::String(ev.tenant.clone())),
            "subject" => Some(Value::String(ev.subject.clone())),
            "event_type" => Some(Value::String(ev.event_type.clone())),
            field => ev.payload.get(field).cloned(),
        };
        let Some(have) = have else { return false };
        match want {
            Value::Array(any) => any.contains(&have),
            one => *one == have,
        }
    })
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventContext;
    use serde_json::json;

    #[test]
    fn patterns_match_names_versions_and_contexts() {
        assert!(pattern_matches("*", "file.promoted", 1));
        assert!(pattern_matches("file.*", "file.promoted", 1));
        assert!(pattern_matches("file.*", "file.variant.generated", 1));
        assert!(!pattern_matches("file.*", "filesystem.x", 1));
        assert!(!pattern_matches("file.*", "file", 1));
        assert!(pattern_matches("file.promoted", "file.promoted", 2));
        assert!(pattern_matches("file.promoted.v2", "file.promoted", 2));
        assert!(!pattern_matches("file.promoted.v1", "file.promoted", 2));
        assert!(!pattern_matches("file.promote", "file.promoted", 1));
    }

    #[test]
    fn filters_test_envelope_attributes_and_payload_fields() {
        let ev = EventContext::root("acme", "c", None).event("file.promoted", 1, "f1", json!({"kind": "kyc_doc"}));
        let mut spec = SubscriptionSpec::new("s", &["file.*"]);
        assert!(spec.matches(&ev));
        spec.filter.insert("kind".into(), json!("kyc_doc"));
        spec.filter.insert("tenant".into(), json!(["other", "acme"]));
        assert!(spec.matches(&ev));
        spec.filter.insert("kind".into(), json!("avatar"));
        assert!(!spec.matches(&ev));
        spec.filter.clear();
        spec.filter.insert("missing".into(), json!("x"));
        assert!(!spec.matches(&ev));
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        let p = RetryPolicy { max_attempts: 10, base: Duration::from_millis(100), cap: Duration::from_secs(1) };
        for _ in 0..100 {
            let d1 = p.backoff(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100), "{d1:?}");
            let d3 = p.backoff(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400), "{d3:?}");
            let d20 = p.backoff(20);
            assert!(d20 >= Duration::from_millis(500) && d20 <= Duration::from_secs(1), "{d20:?}");
        }
    }
}
