-- expect-index: behavioral_events_userId_dayOfWeek_idx
SELECT count(*) FROM behavioral_events WHERE "userId" = 'user_000042' AND "dayOfWeek" = 3;
