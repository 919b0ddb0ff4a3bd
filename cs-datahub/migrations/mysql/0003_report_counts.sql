-- cs-datahub schema v3 for MariaDB/MySQL; see the SQLite file for what each part is for.
CREATE TABLE cs_report_counts (
    tenant VARCHAR(128) NOT NULL,
    day BIGINT NOT NULL,
    agent VARCHAR(128) NOT NULL,
    measure VARCHAR(128) NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (tenant, day, agent, measure)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
