-- cs-datahub schema v2 for PostgreSQL; see the SQLite file for what each part is for.
CREATE TABLE cs_visitors (
    tenant TEXT NOT NULL,
    visitor TEXT NOT NULL,
    display_name TEXT,
    email TEXT,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    attributes TEXT NOT NULL,
    PRIMARY KEY (tenant, visitor)
);
CREATE INDEX cs_visitors_by_last_seen ON cs_visitors (tenant, last_seen, visitor);

CREATE INDEX cs_conversations_open ON cs_conversations (tenant, created_at, id)
    WHERE state <> 'closed';
