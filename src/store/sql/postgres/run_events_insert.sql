INSERT INTO run_events (run_id, generator, seq, channel, status, intended_at_us, latency_us)
SELECT $1, $2, * FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::bigint[], $7::bigint[])
