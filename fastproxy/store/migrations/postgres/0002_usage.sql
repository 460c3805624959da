-- The usage API pages by id within one key or user, and admins filter by time.
CREATE INDEX usage_key_id ON usage (key_id, id);
CREATE INDEX usage_user_id ON usage (user_id, id);
CREATE INDEX usage_ts ON usage (ts);
-- request_id is unique per proxied request; the client's own x-request-id (reusable) is kept beside it.
ALTER TABLE usage ADD COLUMN client_request_id text;
CREATE INDEX usage_client_request_id ON usage (client_request_id);
