SELECT status, attempt, emitted_at_us, error_code, error_reason
FROM events WHERE payload_id = $1 ORDER BY emitted_at_us, attempt
