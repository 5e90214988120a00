-- The event log: every published event, forever (the audit trail and the source of replays).
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT, -- log order only; never used as a delivery cursor
    event_id       TEXT    NOT NULL UNIQUE,
    event_type     TEXT    NOT NULL,
    event_version  INTEGER NOT NULL,
    correlation_id TEXT    NOT NULL,
    causation_id   TEXT,
    created_at     INTEGER NOT NULL,                  -- unix microseconds
    source         TEXT    NOT NULL,
    subject        TEXT    NOT NULL,
    tenant         TEXT    NOT NULL,
    traceparent    TEXT,
    payload        TEXT    NOT NULL
);
CREATE INDEX events_subject ON events (subject, seq);
CREATE INDEX events_correlation ON events (correlation_id, seq);
CREATE INDEX events_created ON events (created_at);

-- Named durable subscriptions. The publisher fans out on write: one delivery row per matching
-- subscription, inserted in the publishing transaction (no read cursor, so no commit-order gaps).
CREATE TABLE subscriptions (
    name            TEXT    PRIMARY KEY,
    patterns        TEXT    NOT NULL,            -- JSON array of type patterns
    filter          TEXT    NOT NULL DEFAULT '{}', -- JSON object: attribute -> value | [values]
    max_attempts    INTEGER NOT NULL,
    backoff_base_ms INTEGER NOT NULL,
    backoff_cap_ms  INTEGER NOT NULL,
    lease_ms        INTEGER NOT NULL,
    ordered         INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    disabled_at     INTEGER
);

-- Bumped on every subscription change so publishers can cache the subscription list.
CREATE TABLE bus_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO bus_meta (key, value) VALUES ('subscriptions_version', 0);

-- One row per (subscription, event): the embedded bus's queue and the deliveries' history.
CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    ordering_key TEXT,                 -- the subject, when the subscription is ordered
    state        TEXT    NOT NULL,     -- pending | leased | done | dead | discarded
    attempts     INTEGER NOT NULL DEFAULT 0,
    available_at INTEGER NOT NULL,     -- unix ms: not before
    lease_until  INTEGER,              -- unix ms, while leased
    last_error   TEXT,
    updated_at   INTEGER NOT NULL,     -- unix ms
    UNIQUE (subscription, event_id)
);
CREATE INDEX deliveries_ready ON deliveries (subscription, state, id);
CREATE INDEX deliveries_key ON deliveries (subscription, ordering_key, id)
    WHERE state IN ('pending', 'leased');
CREATE INDEX deliveries_event ON deliveries (event_id);

-- The consumers' inbox: written in the same transaction as a handler's effects.
CREATE TABLE processed (
    subscription TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    processed_at INTEGER NOT NULL,
    PRIMARY KEY (subscription, event_id)
) WITHOUT ROWID;

-- Durable timers: an event to publish at a time, unless cancelled first.
CREATE TABLE timers (
    id      TEXT    PRIMARY KEY,
    fire_at INTEGER NOT NULL, -- unix ms
    event   TEXT    NOT NULL  -- the envelope, with its event_id already assigned
);
CREATE INDEX timers_due ON timers (fire_at);
