-- expect-index: behavioral_events_userId_timeOfDay_idx
SELECT count(*) FROM behavioral_events WHERE "userId" = 'user_000042' AND "timeOfDay" = 21;
