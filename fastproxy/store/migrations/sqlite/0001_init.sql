-- Users, API keys and the usage table (written by the usage pipeline).
-- Timestamps are Unix seconds (REAL); JSON columns hold JSON text.
CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    email       TEXT,
    created_at  REAL NOT NULL,
    disabled    INTEGER NOT NULL DEFAULT 0,
    limits      TEXT
);

CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY,
    user_id         TEXT REFERENCES users (id),
    name            TEXT NOT NULL,
    key_prefix      TEXT NOT NULL,
    key_hint        TEXT NOT NULL,
    key_hash        TEXT NOT NULL UNIQUE,
    created_at      REAL NOT NULL,
    last_used_at    REAL,
    expires_at      REAL,
    revoked_at      REAL,
    allowed_models  TEXT,
    limits          TEXT
);
CREATE INDEX api_keys_user_id ON api_keys (user_id, id);

CREATE TABLE usage (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id         TEXT NOT NULL UNIQUE,
    ts                 REAL NOT NULL,
    key_id             TEXT,
    user_id            TEXT,
    model              TEXT,
    upstream_model     TEXT,
    provider           TEXT,
    endpoint           TEXT NOT NULL,
    streamed           INTEGER NOT NULL DEFAULT 0,
    status             INTEGER NOT NULL,
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    total_tokens       INTEGER NOT NULL DEFAULT 0,
    cached_tokens      INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens   INTEGER NOT NULL DEFAULT 0,
    cost_usd           REAL NOT NULL DEFAULT 0,
    latency_ms         REAL,
    ttfb_ms            REAL,
    client_ip          TEXT,
    error              TEXT,
    estimated          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX usage_key_ts ON usage (key_id, ts);
CREATE INDEX usage_user_ts ON usage (user_id, ts);
