-- expect-index: recommendations_userId_status_priorityScore_idx
SELECT id FROM recommendations WHERE "userId" = 'user_000042' AND status = 'PENDING' ORDER BY "priorityScore" DESC LIMIT 10;
