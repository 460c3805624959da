-- End-user accounts (fastproxy.selfservice): password and wallet sign-in, refresh-token families, SIWE nonces.
-- Fails on an existing database holding two users whose emails differ only in case: merge them first.
ALTER TABLE users ADD COLUMN password_hash text;
ALTER TABLE users ADD COLUMN wallet_address text;
-- Models a user's self-service keys may be limited to (null: every model).
ALTER TABLE users ADD COLUMN allowed_models jsonb;
CREATE UNIQUE INDEX users_email_lower ON users (lower(email));
CREATE UNIQUE INDEX users_wallet_address ON users (wallet_address);

-- Only SHA-256 hashes of refresh tokens are stored. Times are Unix seconds.
CREATE TABLE refresh_tokens (
    token_hash  text PRIMARY KEY,
    family_id   text NOT NULL,
    user_id     text NOT NULL REFERENCES users (id),
    created_at  bigint NOT NULL,
    expires_at  bigint NOT NULL,
    used_at     bigint,
    revoked_at  bigint
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- Sign-In with Ethereum nonces when no Redis is configured: single use, deleted when taken.
CREATE TABLE auth_nonces (
    nonce       text PRIMARY KEY,
    expires_at  bigint NOT NULL
);
