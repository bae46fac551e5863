-- expect-index: struggle_predictions_userId_topicId_predictionDate_idx
SELECT id FROM struggle_predictions WHERE "userId" = 'user_000042' AND "topicId" = 'topic_0007' ORDER BY "predictionDate" DESC LIMIT 10;
