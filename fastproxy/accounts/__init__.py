"""API keys and users: the key format, auth (key -> principal, cached), invalidation across instances,
last-used stamps, provisioning, the admin API and the accounts CLI."""
