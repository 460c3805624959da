-- The usage API pages by id within one key or user, and admins filter by time.
CREATE INDEX usage_key_id ON usage (key_id, id);
CREATE INDEX usage_user_id ON usage (user_id, id);
CREATE INDEX usage_ts ON usage (ts);
