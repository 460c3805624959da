-- Providers and routes created through the admin API (issue 17). `body` is the entry's JSON; a provider's
-- upstream keys in it are Fernet tokens (FASTPROXY_SECRET_KEYS), never the keys.
CREATE TABLE config_entries (
    kind text NOT NULL CHECK (kind IN ('provider', 'route')),
    name text NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);
