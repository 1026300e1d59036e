-- Every webhook delivery attempt of the front doors' acks: what it came to and when the next one is due
-- (none: delivered, or the vendor's retry policy gave up). A restart goes on from the last attempt: it
-- waits for the one due, numbers on, and does not post again what was delivered.
CREATE TABLE IF NOT EXISTS webhook_attempts (
    event_id            TEXT    NOT NULL,
    attempt             INTEGER NOT NULL,
    payload_id          TEXT    NOT NULL,
    vendor              TEXT    NOT NULL,
    url                 TEXT    NOT NULL,
    outcome             TEXT    NOT NULL,
    http_status         INTEGER,
    error               TEXT,
    attempted_at_us     BIGINT  NOT NULL,
    next_attempt_at_us  BIGINT,
    PRIMARY KEY (event_id, attempt)
);
CREATE INDEX IF NOT EXISTS webhook_attempts_payload_id ON webhook_attempts (payload_id);
