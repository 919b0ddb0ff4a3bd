-- cs-datahub schema v1 for PostgreSQL; see the SQLite file for what each part is for.
CREATE TABLE cs_conversations (
    id BYTEA PRIMARY KEY,
    tenant TEXT NOT NULL,
    visitor TEXT NOT NULL,
    agent TEXT,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seq BIGINT NOT NULL DEFAULT 0,
    data TEXT NOT NULL
);
CREATE INDEX cs_conversations_by_visitor ON cs_conversations (tenant, visitor, created_at);
CREATE INDEX cs_conversations_by_agent ON cs_conversations (tenant, agent, state);

CREATE TABLE cs_messages (
    conversation_id BYTEA NOT NULL,
    seq BIGINT NOT NULL,
    sender TEXT NOT NULL,
    body TEXT NOT NULL,
    client_msg_id TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
-- Partial: messages without a client id (bot, system) need no entry.
CREATE UNIQUE INDEX cs_messages_by_client_id ON cs_messages (conversation_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;

CREATE TABLE cs_daily_stats (
    tenant TEXT NOT NULL,
    day BIGINT NOT NULL,
    conversations BIGINT NOT NULL DEFAULT 0,
    messages BIGINT NOT NULL DEFAULT 0,
    first_responses BIGINT NOT NULL DEFAULT 0,
    first_response_ms_total BIGINT NOT NULL DEFAULT 0,
    closed BIGINT NOT NULL DEFAULT 0,
    bot_resolved BIGINT NOT NULL DEFAULT 0,
    handoffs BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, day)
);
