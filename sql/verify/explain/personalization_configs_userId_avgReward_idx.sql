-- expect-index: personalization_configs_userId_avgReward_idx
SELECT id FROM personalization_configs WHERE "userId" = 'user_000042' ORDER BY "avgReward" DESC LIMIT 3;
