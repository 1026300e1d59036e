SELECT (SELECT count(*) FROM messages) AS messages,
       (SELECT count(*) FROM events) AS events,
       (SELECT min(emitted_at_us) FROM events) AS first_us,
       (SELECT max(emitted_at_us) FROM events) AS last_us
