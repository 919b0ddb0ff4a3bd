-- cs-datahub schema v1 for SQLite. The SQL stores share one shape; only the
-- column types differ by dialect.

-- One row per conversation. `data` is the whole cs_core::Conversation as JSON
-- (so it round-trips exactly); the other columns are copies kept for indexes.
-- `last_seq` is the store's seq counter: appends lock this row to number messages.
CREATE TABLE cs_conversations (
    id BLOB PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    visitor TEXT NOT NULL,
    agent TEXT,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    data TEXT NOT NULL
);
CREATE INDEX cs_conversations_by_visitor ON cs_conversations (tenant, visitor, created_at);
CREATE INDEX cs_conversations_by_agent ON cs_conversations (tenant, agent, state);

-- The primary key is the read path (a conversation's messages by seq), so the
-- table is clustered on it.
CREATE TABLE cs_messages (
    conversation_id BLOB NOT NULL,
    seq INTEGER NOT NULL,
    sender TEXT NOT NULL,
    body TEXT NOT NULL,
    client_msg_id TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;
-- Partial: messages without a client id (bot, system) need no entry.
CREATE UNIQUE INDEX cs_messages_by_client_id ON cs_messages (conversation_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;

-- Per-tenant, per-UTC-day counters, bumped in the same transaction as the
-- write they count, so a 30-day report reads 30 rows.
CREATE TABLE cs_daily_stats (
    tenant TEXT NOT NULL,
    day INTEGER NOT NULL,
    conversations INTEGER NOT NULL DEFAULT 0,
    messages INTEGER NOT NULL DEFAULT 0,
    first_responses INTEGER NOT NULL DEFAULT 0,
    first_response_ms_total INTEGER NOT NULL DEFAULT 0,
    closed INTEGER NOT NULL DEFAULT 0,
    bot_resolved INTEGER NOT NULL DEFAULT 0,
    handoffs INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, day)
) WITHOUT ROWID;
