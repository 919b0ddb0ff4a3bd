-- cs-datahub schema v2 for SQLite: visitor records, and the index behind
-- MessageStoreExt::open_conversations.

-- One row per visitor of a tenant. `attributes` is a JSON object of strings
-- (the host's free-form fields); times are milliseconds since 1970.
CREATE TABLE cs_visitors (
    tenant TEXT NOT NULL,
    visitor TEXT NOT NULL,
    display_name TEXT,
    email TEXT,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    attributes TEXT NOT NULL,
    PRIMARY KEY (tenant, visitor)
) WITHOUT ROWID;
-- recent_visitors reads this backwards: newest last_seen first.
CREATE INDEX cs_visitors_by_last_seen ON cs_visitors (tenant, last_seen, visitor);

-- Partial: only open conversations, so a restart's "what is still open"
-- reads as many entries as it returns, however many closed ones pile up.
CREATE INDEX cs_conversations_open ON cs_conversations (tenant, created_at, id)
    WHERE state <> 'closed';
