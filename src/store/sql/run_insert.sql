INSERT INTO runs (run_id, generator, started_at_us, ended_at_us, settings, scenario, results)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (run_id, generator) DO UPDATE SET
    started_at_us = excluded.started_at_us,
    ended_at_us = excluded.ended_at_us,
    settings = excluded.settings,
    scenario = excluded.scenario,
    results = excluded.results
