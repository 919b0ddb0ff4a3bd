-- cs-datahub schema v1 for MariaDB/MySQL; see the SQLite file for what each part is for.
-- utf8mb4_bin: ids compare byte for byte, so client ids "A" and "a" stay distinct.
CREATE TABLE cs_conversations (
    id BINARY(16) NOT NULL PRIMARY KEY,
    tenant VARCHAR(128) NOT NULL,
    visitor VARCHAR(128) NOT NULL,
    agent VARCHAR(128),
    state VARCHAR(16) NOT NULL,
    created_at BIGINT NOT NULL,
    last_seq BIGINT NOT NULL DEFAULT 0,
    data MEDIUMTEXT NOT NULL,
    INDEX cs_conversations_by_visitor (tenant, visitor, created_at),
    INDEX cs_conversations_by_agent (tenant, agent, state)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE cs_messages (
    conversation_id BINARY(16) NOT NULL,
    seq BIGINT NOT NULL,
    sender VARCHAR(512) NOT NULL,
    body MEDIUMTEXT NOT NULL,
    client_msg_id VARCHAR(128),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, seq),
    UNIQUE INDEX cs_messages_by_client_id (conversation_id, client_msg_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE cs_daily_stats (
    tenant VARCHAR(128) NOT NULL,
    day BIGINT NOT NULL,
    conversations BIGINT NOT NULL DEFAULT 0,
    messages BIGINT NOT NULL DEFAULT 0,
    first_responses BIGINT NOT NULL DEFAULT 0,
    first_response_ms_total BIGINT NOT NULL DEFAULT 0,
    closed BIGINT NOT NULL DEFAULT 0,
    bot_resolved BIGINT NOT NULL DEFAULT 0,
    handoffs BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, day)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
