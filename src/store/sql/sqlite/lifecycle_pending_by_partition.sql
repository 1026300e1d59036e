-- Messages of one partition of one incarnation of a topic whose planned events are not all stored yet.
SELECT m.src_topic, m.src_topic_id, m.src_partition, m.src_offset, m.payload_id, m.batch_id, m.channel, m.recipient,
       m.tenant_id, m.received_at_us, m.plan, m.headers
FROM messages m
WHERE m.src_topic = ?1 AND m.src_partition = ?2 AND m.src_topic_id = ?3
  AND m.planned_events > (SELECT count(*) FROM events e WHERE e.payload_id = m.payload_id)
ORDER BY m.src_offset
