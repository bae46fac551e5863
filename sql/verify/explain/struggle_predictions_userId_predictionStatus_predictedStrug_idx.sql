-- expect-index: struggle_predictions_userId_predictionStatus_predictedStrug_idx
SELECT id FROM struggle_predictions WHERE "userId" = 'user_000042' AND "predictionStatus" = 'PENDING' AND "predictedStruggleProbability" >= 0.7;
