INSERT INTO events (event_id, payload_id, batch_id, channel, status, attempt, vendor_message_id, scheduled_at_us,
                    emitted_at_us, error_code, error_reason, bounce_type, tenant_id, ack_partition, ack_offset, fault)
SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::text[], $8::int8[],
                     $9::int8[], $10::text[], $11::text[], $12::text[], $13::text[], $14::int4[], $15::int8[], $16::text[])
ON CONFLICT (event_id) DO NOTHING
