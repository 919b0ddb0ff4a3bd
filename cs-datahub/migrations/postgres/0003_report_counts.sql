-- cs-datahub schema v3 for PostgreSQL; see the SQLite file for what each part is for.
CREATE TABLE cs_report_counts (
    tenant TEXT NOT NULL,
    day BIGINT NOT NULL,
    agent TEXT NOT NULL,
    measure TEXT NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (tenant, day, agent, measure)
);
