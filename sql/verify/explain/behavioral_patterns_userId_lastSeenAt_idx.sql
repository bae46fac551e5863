-- expect-index: behavioral_patterns_userId_lastSeenAt_idx
SELECT id FROM behavioral_patterns WHERE "userId" = 'user_000042' ORDER BY "lastSeenAt" DESC LIMIT 5;
