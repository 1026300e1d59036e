INSERT INTO messages (src_topic, src_partition, src_offset, payload_id, batch_id, channel, recipient, tenant_id,
                      received_at_us, scenario, path, planned_events, plan, headers, body, scenario_version, rule, faults,
                      src_topic_id, vendor_message_id)
SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                     $9::int8[], $10::text[], $11::text[], $12::int4[], $13::text[], $14::text[], $15::bytea[],
                     $16::text[], $17::text[], $18::text[], $19::text[], $20::text[])
ON CONFLICT (src_topic_id, src_topic, src_partition, src_offset) DO NOTHING
