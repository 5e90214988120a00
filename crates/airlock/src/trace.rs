//! `airlock trace`: an event chain printed as the tree its `causation_id`s make, with each
//! event's time relative to the root and every delivery that failed or is still pending.

use std::collections::HashMap;

use airlock_events::{DeliveryState, LoggedEvent};
use uuid::Uuid;

/// Renders `events` (log order) as trees, marking unfinished or failed deliveries.
pub fn render(events: &[LoggedEvent], deliveries: &[DeliveryState]) -> String {
    let ids: std::collections::HashSet<Uuid> = events.iter().map(|e| e.envelope.event_id).collect();
    let mut children: HashMap<Uuid, Vec<&LoggedEvent>> = HashMap::new();
    let mut roots = Vec::new();
    for e in events {
        match e.envelope.causation_id {
            Some(c) if ids.contains(&c) => children.entry(c).or_default().push(e),
            _ => roots.push(e),
        }
    }
    let mut by_event: HashMap<Uuid, Vec<&DeliveryState>> = HashMap::new();
    for d in deliveries {
        by_event.entry(d.event_id).or_default().push(d);
    }
    let mut out = String::new();
    for root in roots {
        let t0 = root.envelope.created_at;
        out.push_str(&format!(
            "{}  {}  correlation={}\n",
            root.envelope.versioned_type(),
            airlock_events::envelope::format_rfc3339(t0),
            root.envelope.correlation_id
        ));
        notes(&mut out, "", root, &by_event);
        walk(&mut out, "", root, &children, &by_event, t0);
    }
    out
}

fn walk(
    out: &mut String,
    prefix: &str,
    node: &LoggedEvent,
    children: &HashMap<Uuid, Vec<&LoggedEvent>>,
    deliveries: &HashMap<Uuid, Vec<&DeliveryState>>,
    t0: time::OffsetDateTime,
) {
    let kids = children.get(&node.envelope.event_id).map(Vec::as_slice).unwrap_or_default();
    for (i, kid) in kids.iter().enumerate() {
        let last = i + 1 == kids.len();
        let ms = (kid.envelope.created_at - t0).whole_milliseconds();
        out.push_str(&format!("{prefix}{}{}  +{ms}ms\n", if last { "└── " } else { "├── " }, kid.envelope.versioned_type()));
        let child_prefix = format!("{prefix}{}", if last { "    " } else { "│   " });
        notes(out, &child_prefix, kid, deliveries);
        walk(out, &child_prefix, kid, children, deliveries, t0);
    }
}

/// One line per delivery that is not done: dead, pending a retry, or in progress.
fn notes(out: &mut String, prefix: &str, e: &LoggedEvent, deliveries: &HashMap<Uuid, Vec<&DeliveryState>>) {
    for d in deliveries.get(&e.envelope.event_id).map(Vec::as_slice).unwrap_or_default() {
        let err = d.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        let line = match d.state.as_str() {
            "done" | "discarded" => continue,
            "dead" => format!("✗ {} DEAD after {} attempts{err}", d.subscription, d.attempts),
            "leased" => format!("… {} in progress (attempt {}){err}", d.subscription, d.attempts),
            _ if d.attempts > 0 => format!(
                "! {} FAILED {} time(s), retry at {}{err}",
                d.subscription,
                d.attempts,
                airlock_events::envelope::format_rfc3339(d.next_attempt_at)
            ),
            _ => format!("… {} pending", d.subscription),
        };
        out.push_str(&format!("{prefix}    {line}\n"));
    }
}
