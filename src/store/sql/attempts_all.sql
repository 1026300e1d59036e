SELECT CAST(event_id AS TEXT) AS event_id, attempt, payload_id, vendor, url, outcome, http_status, error,
       attempted_at_us, next_attempt_at_us
FROM webhook_attempts ORDER BY payload_id, attempted_at_us, attempt
