-- Reverses Epic 5 schema completion (migration.sql beside this file), newest change first.
-- Run by `python -m schema_deploy rollback` / the rollback_schema DAG, never by a deploy:
-- the ledger checksum is of migration.sql only. Every statement is guarded with IF EXISTS,
-- so a rollback interrupted half-way is finished by running it again.

-- PersonalizationConfig indexes (dropped CONCURRENTLY: writes continue meanwhile)
DROP INDEX CONCURRENTLY IF EXISTS "personalization_configs_userId_avgReward_idx";
DROP INDEX CONCURRENTLY IF EXISTS "personalization_configs_userId_context_isActive_idx";

-- Recommendation indexes
DROP INDEX CONCURRENTLY IF EXISTS "recommendations_userId_createdAt_idx";
DROP INDEX CONCURRENTLY IF EXISTS "recommendations_userId_status_priorityScore_idx";

-- StrugglePrediction indexes
DROP INDEX CONCURRENTLY IF EXISTS "struggle_predictions_userId_topicId_predictionDate_idx";
DROP INDEX CONCURRENTLY IF EXISTS "struggle_predictions_userId_predictionStatus_predictedStrug_idx";

-- BehavioralPattern indexes
DROP INDEX CONCURRENTLY IF EXISTS "behavioral_patterns_userId_lastSeenAt_idx";
DROP INDEX CONCURRENTLY IF EXISTS "behavioral_patterns_userId_patternType_confidence_idx";

-- BehavioralEvent indexes
DROP INDEX CONCURRENTLY IF EXISTS "behavioral_events_userId_timeOfDay_idx";
DROP INDEX CONCURRENTLY IF EXISTS "behavioral_events_userId_dayOfWeek_idx";
DROP INDEX CONCURRENTLY IF EXISTS "behavioral_events_userId_eventType_timestamp_idx";

-- StudyScheduleRecommendation index
DROP INDEX CONCURRENTLY IF EXISTS "study_schedule_recommendations_appliedAt_idx";

-- Columns and the foreign key: brief ACCESS EXCLUSIVE locks, no table rewrite
-- (DROP COLUMN only marks the column dropped). The data in "appliedAt" and
-- "metrics" is lost; a rollback from backup keeps it.
ALTER TABLE "study_schedule_recommendations" DROP COLUMN IF EXISTS "appliedAt";

ALTER TABLE "experiment_assignments" DROP CONSTRAINT IF EXISTS "experiment_assignments_experimentId_fkey";

ALTER TABLE "experiment_assignments" DROP COLUMN IF EXISTS "metrics";
