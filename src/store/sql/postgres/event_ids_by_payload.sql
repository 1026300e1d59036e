SELECT event_id::text AS event_id FROM events WHERE payload_id = ANY($1)
