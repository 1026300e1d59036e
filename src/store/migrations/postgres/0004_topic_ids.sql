-- Messages are keyed by the incarnation of their topic as well as its name, partition and offset:
-- `{cluster id}/{topic id}`. A topic deleted and created again (or an embedded broker started again over an
-- old store) starts its offsets at 0 again; under the old key its new messages were taken for stored ones
-- and skipped. Rows stored before this migration keep an empty incarnation.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS src_topic_id TEXT NOT NULL DEFAULT '';
ALTER TABLE messages DROP CONSTRAINT IF EXISTS messages_pkey;
ALTER TABLE messages ADD PRIMARY KEY (src_topic_id, src_topic, src_partition, src_offset);
