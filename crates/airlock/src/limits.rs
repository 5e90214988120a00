//! Per-key request rate limits (token buckets) and per-tenant concurrent upload slots. Both are
//! per process: with several API processes, each enforces its own share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A token bucket per key: `rate` tokens a second, up to `2 × rate` saved for bursts.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        Self { rate, burst: rate * 2.0, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token for `key`, or says in how many seconds one will be there.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(()) };
        let now = Instant::now();
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// Counts uploads streaming at once per tenant.
pub struct UploadSlots {
    max: usize,
    busy: Mutex<HashMap<String, usize>>,
}

/// One streaming upload; frees its slot when dropped.
pub struct UploadSlot {
    slots: Arc<UploadSlots>,
    tenant: String,
}

impl UploadSlots {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self { max: max as usize, busy: Mutex::new(HashMap::new()) })
    }

    /// A slot for `tenant`, or `None` when all are taken.
    pub fn acquire(self: &Arc<Self>, tenant: &str) -> Option<UploadSlot> {
        let mut busy = self.busy.lock().ok()?;
        let n = busy.entry(tenant.to_owned()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(UploadSlot { slots: self.clone(), tenant: tenant.to_owned() })
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.slots.busy.lock()
            && let Some(n) = busy.get_mut(&self.tenant)
        {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_asks_to_wait() {
        let l = RateLimiter::new(5);
        let allowed = (0..20).filter(|_| l.check("k").is_ok()).count();
        assert_eq!(allowed, 10, "burst of twice the rate");
        assert_eq!(l.check("k"), Err(1));
        assert!(l.check("other").is_ok(), "keys are independent");
    }

    #[test]
    fn upload_slots_are_per_tenant_and_freed_on_drop() {
        let s = UploadSlots::new(2);
        let a = s.acquire("t").expect("1");
        let _b = s.acquire("t").expect("2");
        assert!(s.acquire("t").is_none());
        assert!(s.acquire("u").is_some());
        drop(a);
        assert!(s.acquire("t").is_some());
    }
}
