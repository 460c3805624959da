-- Providers and routes: how many upstream attempts a request took, and whether its stream broke off
-- after it had started (the client got an error event; the tokens are partly estimated).
ALTER TABLE usage ADD COLUMN attempts integer NOT NULL DEFAULT 1;
ALTER TABLE usage ADD COLUMN partial boolean NOT NULL DEFAULT false;
