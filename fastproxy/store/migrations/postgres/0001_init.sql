-- Users, API keys and the usage table (written by the usage pipeline).
CREATE TABLE users (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    email       text,
    created_at  timestamptz NOT NULL,
    disabled    boolean NOT NULL DEFAULT false,
    limits      jsonb
);

CREATE TABLE api_keys (
    id              text PRIMARY KEY,
    user_id         text REFERENCES users (id),
    name            text NOT NULL,
    key_prefix      text NOT NULL,
    key_hint        text NOT NULL,
    key_hash        text NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL,
    last_used_at    timestamptz,
    expires_at      timestamptz,
    revoked_at      timestamptz,
    allowed_models  jsonb,
    limits          jsonb
);
CREATE INDEX api_keys_user_id ON api_keys (user_id, id);

CREATE TABLE usage (
    id                 bigserial PRIMARY KEY,
    request_id         text NOT NULL UNIQUE,
    ts                 timestamptz NOT NULL,
    key_id             text,
    user_id            text,
    model              text,
    upstream_model     text,
    provider           text,
    endpoint           text NOT NULL,
    streamed           boolean NOT NULL DEFAULT false,
    status             integer NOT NULL,
    prompt_tokens      integer NOT NULL DEFAULT 0,
    completion_tokens  integer NOT NULL DEFAULT 0,
    total_tokens       integer NOT NULL DEFAULT 0,
    cached_tokens      integer NOT NULL DEFAULT 0,
    reasoning_tokens   integer NOT NULL DEFAULT 0,
    cost_usd           double precision NOT NULL DEFAULT 0,
    latency_ms         double precision,
    ttfb_ms            double precision,
    client_ip          text,
    error              text,
    estimated          boolean NOT NULL DEFAULT false
);
CREATE INDEX usage_key_ts ON usage (key_id, ts);
CREATE INDEX usage_user_ts ON usage (user_id, ts);
