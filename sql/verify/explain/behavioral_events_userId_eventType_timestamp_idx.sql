-- expect-index: behavioral_events_userId_eventType_timestamp_idx
SELECT id, "timestamp" FROM behavioral_events WHERE "userId" = 'user_000042' AND "eventType" = 'CARD_REVIEWED' ORDER BY "timestamp" DESC LIMIT 20;
