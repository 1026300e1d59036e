SELECT channel, status, count(*) AS n FROM events GROUP BY channel, status ORDER BY channel, status
