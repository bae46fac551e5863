-- expect-index: personalization_configs_userId_context_isActive_idx
SELECT id FROM personalization_configs WHERE "userId" = 'user_000042' AND context = 'SESSION' AND "isActive";
