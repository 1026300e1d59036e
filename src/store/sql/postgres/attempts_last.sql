SELECT DISTINCT ON (event_id) event_id::text AS event_id, attempt, outcome, next_attempt_at_us
FROM webhook_attempts WHERE event_id = ANY($1::uuid[]) ORDER BY event_id, attempt DESC
