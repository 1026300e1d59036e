-- Load runs: one row per generator process of a run (`understudy load`), merged by `understudy report`.
-- `results` holds the counts and the latency histograms (JSON), enough to re-create every report.
CREATE TABLE IF NOT EXISTS runs (
    run_id         TEXT    NOT NULL,
    generator      INTEGER NOT NULL,
    started_at_us  BIGINT  NOT NULL,
    ended_at_us    BIGINT  NOT NULL,
    settings       TEXT    NOT NULL,
    scenario       TEXT,
    results        TEXT    NOT NULL,
    PRIMARY KEY (run_id, generator)
);
CREATE INDEX IF NOT EXISTS runs_started_at ON runs (started_at_us);

-- The record of a load run: one row per message and status (latency from the intended send time to the
-- status's arrival), plus a `LOST` row per message without a final status and a `NOT_SENT` row per
-- message Kafka refused. CSV exports, time series, per-batch health and comparisons read it.
CREATE TABLE IF NOT EXISTS run_events (
    run_id          TEXT    NOT NULL,
    generator       INTEGER NOT NULL,
    seq             BIGINT  NOT NULL,
    channel         TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    intended_at_us  BIGINT  NOT NULL,
    latency_us      BIGINT
);
CREATE INDEX IF NOT EXISTS run_events_run ON run_events (run_id, generator, seq);
