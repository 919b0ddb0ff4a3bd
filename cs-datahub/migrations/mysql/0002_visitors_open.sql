-- cs-datahub schema v2 for MariaDB/MySQL; see the SQLite file for what each part is for.
CREATE TABLE cs_visitors (
    tenant VARCHAR(128) NOT NULL,
    visitor VARCHAR(128) NOT NULL,
    display_name VARCHAR(256),
    email VARCHAR(256),
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    attributes MEDIUMTEXT NOT NULL,
    PRIMARY KEY (tenant, visitor),
    INDEX cs_visitors_by_last_seen (tenant, last_seen, visitor)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- No partial indexes here: a generated column that is created_at while the
-- conversation is open and NULL once it is closed, indexed with the tenant,
-- serves the same query (WHERE tenant = ? AND open_since IS NOT NULL).
ALTER TABLE cs_conversations
    ADD COLUMN open_since BIGINT AS (IF(state = 'closed', NULL, created_at)) VIRTUAL,
    ADD INDEX cs_conversations_open (tenant, open_since);
