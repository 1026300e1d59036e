SELECT generator, seq, channel, status, intended_at_us, latency_us
FROM run_events WHERE run_id = $1 ORDER BY generator, seq, intended_at_us
