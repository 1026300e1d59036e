SELECT run_id, generator, started_at_us, ended_at_us, settings, scenario, results
FROM runs WHERE run_id = $1 ORDER BY generator
