-- Response cache (issue 19): a hit's row keeps the original token counts, costs 0 and records the cost saved.
ALTER TABLE usage ADD COLUMN cache_hit boolean NOT NULL DEFAULT false;
ALTER TABLE usage ADD COLUMN cost_saved_usd double precision NOT NULL DEFAULT 0;
-- A key's own response-cache settings ({"enabled", "scope"}); NULL follows the global settings.
ALTER TABLE api_keys ADD COLUMN cache jsonb;
