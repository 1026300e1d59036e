-- The version of the scenario that planned each message (scenario files are reloaded while running) and
-- the rule that chose its behaviour (NULL: the channel's own paths).
ALTER TABLE messages ADD COLUMN IF NOT EXISTS scenario_version TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN IF NOT EXISTS rule TEXT;
-- Injected faults (scenario `faults`, `outages`, `throttles`): the kinds a message's plan has, and the one
-- an event carries.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS faults TEXT;
ALTER TABLE events ADD COLUMN IF NOT EXISTS fault TEXT;
