-- Messages are keyed by the incarnation of their topic as well as its name, partition and offset:
-- `{cluster id}/{topic id}`. A topic deleted and created again (or an embedded broker started again over an
-- old store) starts its offsets at 0 again; under the old key its new messages were taken for stored ones
-- and skipped. Rows stored before this migration keep an empty incarnation. SQLite cannot change a primary
-- key in place: the table is rebuilt.
CREATE TABLE messages_new (
    src_topic_id     TEXT    NOT NULL DEFAULT '',
    src_topic        TEXT    NOT NULL,
    src_partition    INTEGER NOT NULL,
    src_offset       BIGINT  NOT NULL,
    payload_id       TEXT    NOT NULL,
    batch_id         TEXT    NOT NULL,
    channel          TEXT    NOT NULL,
    recipient        TEXT    NOT NULL,
    tenant_id        TEXT,
    received_at_us   BIGINT  NOT NULL,
    scenario         TEXT    NOT NULL,
    path             TEXT    NOT NULL,
    planned_events   INTEGER NOT NULL,
    plan             TEXT    NOT NULL,
    headers          TEXT    NOT NULL,
    body             BLOB    NOT NULL,
    scenario_version TEXT    NOT NULL DEFAULT '',
    rule             TEXT,
    faults           TEXT,
    PRIMARY KEY (src_topic_id, src_topic, src_partition, src_offset)
);
INSERT INTO messages_new (src_topic, src_partition, src_offset, payload_id, batch_id, channel, recipient, tenant_id,
                          received_at_us, scenario, path, planned_events, plan, headers, body, scenario_version, rule,
                          faults)
SELECT src_topic, src_partition, src_offset, payload_id, batch_id, channel, recipient, tenant_id, received_at_us,
       scenario, path, planned_events, plan, headers, body, scenario_version, rule, faults
FROM messages;
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;
CREATE INDEX IF NOT EXISTS messages_payload_id ON messages (payload_id);
CREATE INDEX IF NOT EXISTS messages_batch_id ON messages (batch_id);
