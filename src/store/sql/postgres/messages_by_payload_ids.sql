SELECT payload_id, channel, recipient, tenant_id, received_at_us, body, plan
FROM messages WHERE payload_id = ANY($1) ORDER BY received_at_us
