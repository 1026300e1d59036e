SELECT run_id, count(*) AS generators, min(started_at_us) AS started_at_us, max(ended_at_us) AS ended_at_us
FROM runs GROUP BY run_id ORDER BY min(started_at_us) DESC LIMIT $1
