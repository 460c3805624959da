"""Usage and cost accounting: one row per proxied request, written in batches off the request path.

    RequestRecord --(observer: price it, append to a bounded buffer; no I/O)--> UsageWriter task
        --> UsageSink.write_usage (PostgreSQL COPY via staging / SQLite executemany), idempotent on request_id
        --(batch failed or timed out)--> Journal (JSON lines, fsync per batch) --(DB back)--> replayed

Modules: `row` (the row and how a record becomes one), `pricing` (price table), `journal`,
`writer`, `budget` (spend per key/user and the max_budget_usd gate), `api` (the usage endpoints).
"""
