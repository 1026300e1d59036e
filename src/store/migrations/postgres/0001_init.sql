-- Every outbound message consumed, with its source position and its planned lifecycle.
CREATE TABLE IF NOT EXISTS messages (
    src_topic       TEXT    NOT NULL,
    src_partition   INTEGER NOT NULL,
    src_offset      BIGINT  NOT NULL,
    payload_id      TEXT    NOT NULL,
    batch_id        TEXT    NOT NULL,
    channel         TEXT    NOT NULL,
    recipient       TEXT    NOT NULL,
    tenant_id       TEXT,
    received_at_us  BIGINT  NOT NULL,
    scenario        TEXT    NOT NULL,
    path            TEXT    NOT NULL,
    planned_events  INTEGER NOT NULL,
    plan            TEXT    NOT NULL,
    headers         TEXT    NOT NULL,
    body            BYTEA   NOT NULL,
    PRIMARY KEY (src_topic, src_partition, src_offset)
);
CREATE INDEX IF NOT EXISTS messages_payload_id ON messages (payload_id);
CREATE INDEX IF NOT EXISTS messages_batch_id ON messages (batch_id);

-- Every ack event delivered to the ack topic, once (event_id is deterministic).
CREATE TABLE IF NOT EXISTS events (
    event_id           UUID    PRIMARY KEY,
    payload_id         TEXT    NOT NULL,
    batch_id           TEXT    NOT NULL,
    channel            TEXT    NOT NULL,
    status             TEXT    NOT NULL,
    attempt            INTEGER NOT NULL,
    vendor_message_id  TEXT    NOT NULL,
    scheduled_at_us    BIGINT  NOT NULL,
    emitted_at_us      BIGINT  NOT NULL,
    error_code         TEXT,
    error_reason       TEXT,
    bounce_type        TEXT,
    tenant_id          TEXT,
    ack_partition      INTEGER NOT NULL,
    ack_offset         BIGINT  NOT NULL
);
CREATE INDEX IF NOT EXISTS events_payload_id ON events (payload_id);
CREATE INDEX IF NOT EXISTS events_batch_id_status ON events (batch_id, status);
