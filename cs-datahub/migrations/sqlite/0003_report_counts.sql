-- cs-datahub schema v3 for SQLite: the report counters (cs_core::store::reports).
-- One row per (tenant, day in the tenant's zone, agent or '' for the whole
-- desk, measure); each write adds to the rows of what it caused, in its own
-- transaction, so a report reads rows per day and never scans messages.
CREATE TABLE cs_report_counts (
    tenant TEXT NOT NULL,
    day INTEGER NOT NULL,
    agent TEXT NOT NULL,
    measure TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (tenant, day, agent, measure)
) WITHOUT ROWID;
