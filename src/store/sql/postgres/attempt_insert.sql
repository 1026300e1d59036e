INSERT INTO webhook_attempts (event_id, attempt, payload_id, vendor, url, outcome, http_status, error, attempted_at_us,
                              next_attempt_at_us)
SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[], $8::text[],
                     $9::int8[], $10::int8[])
ON CONFLICT (event_id, attempt) DO NOTHING
