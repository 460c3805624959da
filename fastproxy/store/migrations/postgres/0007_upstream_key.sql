-- Pinning (issue 17): a key or user served only through the provider key of this id (a key's pin wins
-- over its user's); NULL: the provider's weighted key pool.
ALTER TABLE api_keys ADD COLUMN upstream_key TEXT;
ALTER TABLE users ADD COLUMN upstream_key TEXT;
