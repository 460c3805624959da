-- End-user accounts (fastproxy.selfservice): password and wallet sign-in, refresh-token families, SIWE nonces.
-- Fails on an existing database holding two users whose emails differ only in case: merge them first.
ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN wallet_address TEXT;
-- Models a user's self-service keys may be limited to (null: every model).
ALTER TABLE users ADD COLUMN allowed_models TEXT;
CREATE UNIQUE INDEX users_email_lower ON users (lower(email));
CREATE UNIQUE INDEX users_wallet_address ON users (wallet_address);

-- Only SHA-256 hashes of refresh tokens are stored. Times are Unix seconds.
CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users (id),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    revoked_at  INTEGER
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- Sign-In with Ethereum nonces when no Redis is configured: single use, deleted when taken.
CREATE TABLE auth_nonces (
    nonce       TEXT PRIMARY KEY,
    expires_at  INTEGER NOT NULL
);
