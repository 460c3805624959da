-- Providers and routes created through the admin API (issue 17). `body` is the entry's JSON; a provider's
-- upstream keys in it are Fernet tokens (FASTPROXY_SECRET_KEYS), never the keys.
CREATE TABLE config_entries (
    kind TEXT NOT NULL CHECK (kind IN ('provider', 'route')),
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
);
