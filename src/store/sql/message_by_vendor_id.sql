SELECT payload_id, channel, recipient, tenant_id, received_at_us, body, plan
FROM messages WHERE vendor_message_id = $1 OR vendor_message_id = $2
LIMIT 1
