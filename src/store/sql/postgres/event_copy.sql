COPY events (event_id, payload_id, batch_id, channel, status, attempt, vendor_message_id, scheduled_at_us,
             emitted_at_us, error_code, error_reason, bounce_type, tenant_id, ack_partition, ack_offset, fault)
FROM STDIN (FORMAT binary)
