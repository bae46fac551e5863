-- expect-index: recommendations_userId_createdAt_idx
SELECT id FROM recommendations WHERE "userId" = 'user_000042' ORDER BY "createdAt" DESC LIMIT 20;
