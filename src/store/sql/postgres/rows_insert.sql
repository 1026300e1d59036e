-- One batch's rows in one statement (one round trip, one implicit transaction): the messages, then
-- the events; rows already stored are skipped.
WITH messages_written AS (
INSERT INTO messages (src_topic, src_partition, src_offset, payload_id, batch_id, channel, recipient, tenant_id,
                      received_at_us, scenario, path, planned_events, plan, headers, body, scenario_version, rule, faults,
                      src_topic_id, vendor_message_id)
SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                     $9::int8[], $10::text[], $11::text[], $12::int4[], $13::text[], $14::text[], $15::bytea[],
                     $16::text[], $17::text[], $18::text[], $19::text[], $20::text[])
ON CONFLICT (src_topic_id, src_topic, src_partition, src_offset) DO NOTHING
), events_written AS (
INSERT INTO events (event_id, payload_id, batch_id, channel, status, attempt, vendor_message_id, scheduled_at_us,
                    emitted_at_us, error_code, error_reason, bounce_type, tenant_id, ack_partition, ack_offset, fault)
SELECT * FROM UNNEST($21::uuid[], $22::text[], $23::text[], $24::text[], $25::text[], $26::int4[], $27::text[], $28::int8[],
                     $29::int8[], $30::text[], $31::text[], $32::text[], $33::text[], $34::int4[], $35::int8[], $36::text[])
ON CONFLICT (event_id) DO NOTHING
)
SELECT 1
