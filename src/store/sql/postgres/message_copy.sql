COPY messages (src_topic, src_partition, src_offset, payload_id, batch_id, channel, recipient, tenant_id,
               received_at_us, scenario, path, planned_events, plan, headers, body, scenario_version, rule, faults,
               src_topic_id, vendor_message_id)
FROM STDIN (FORMAT binary)
