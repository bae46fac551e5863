-- Epic 5 schema completion, exactly as the migration plan gives it
-- (2025-10-17). The deployment tool applies it: in online mode it rewrites
-- the lock-heavy statements below without changing this file's checksum.

-- AlterTable
ALTER TABLE "experiment_assignments"
  ADD COLUMN "metrics" JSONB;

-- AddForeignKey
ALTER TABLE "experiment_assignments"
  ADD CONSTRAINT "experiment_assignments_experimentId_fkey"
  FOREIGN KEY ("experimentId")
  REFERENCES "personalization_experiments"("id")
  ON DELETE CASCADE;

-- AlterTable
ALTER TABLE "study_schedule_recommendations"
  ADD COLUMN "appliedAt" TIMESTAMP(3);

-- CreateIndex
CREATE INDEX "study_schedule_recommendations_appliedAt_idx"
  ON "study_schedule_recommendations"("appliedAt");

-- BehavioralEvent indexes
CREATE INDEX "behavioral_events_userId_eventType_timestamp_idx"
  ON "behavioral_events"("userId", "eventType", "timestamp");
CREATE INDEX "behavioral_events_userId_dayOfWeek_idx"
  ON "behavioral_events"("userId", "dayOfWeek");
CREATE INDEX "behavioral_events_userId_timeOfDay_idx"
  ON "behavioral_events"("userId", "timeOfDay");

-- BehavioralPattern indexes
CREATE INDEX "behavioral_patterns_userId_patternType_confidence_idx"
  ON "behavioral_patterns"("userId", "patternType", "confidence");
CREATE INDEX "behavioral_patterns_userId_lastSeenAt_idx"
  ON "behavioral_patterns"("userId", "lastSeenAt");

-- StrugglePrediction indexes
CREATE INDEX "struggle_predictions_userId_predictionStatus_predictedStrug_idx"
  ON "struggle_predictions"("userId", "predictionStatus", "predictedStruggleProbability");
CREATE INDEX "struggle_predictions_userId_topicId_predictionDate_idx"
  ON "struggle_predictions"("userId", "topicId", "predictionDate");

-- Recommendation indexes
CREATE INDEX "recommendations_userId_status_priorityScore_idx"
  ON "recommendations"("userId", "status", "priorityScore");
CREATE INDEX "recommendations_userId_createdAt_idx"
  ON "recommendations"("userId", "createdAt");

-- PersonalizationConfig indexes
CREATE INDEX "personalization_configs_userId_context_isActive_idx"
  ON "personalization_configs"("userId", "context", "isActive");
CREATE INDEX "personalization_configs_userId_avgReward_idx"
  ON "personalization_configs"("userId", "avgReward");
