-- Each of the 12 Epic 5 indexes exists in schema public, on the right table,
-- and is valid and ready (an interrupted CREATE INDEX CONCURRENTLY leaves an
-- INVALID index that the planner never uses).
WITH expected(indexname, tablename) AS (VALUES
    ('study_schedule_recommendations_appliedAt_idx', 'study_schedule_recommendations'),
    ('behavioral_events_userId_eventType_timestamp_idx', 'behavioral_events'),
    ('behavioral_events_userId_dayOfWeek_idx', 'behavioral_events'),
    ('behavioral_events_userId_timeOfDay_idx', 'behavioral_events'),
    ('behavioral_patterns_userId_patternType_confidence_idx', 'behavioral_patterns'),
    ('behavioral_patterns_userId_lastSeenAt_idx', 'behavioral_patterns'),
    ('struggle_predictions_userId_predictionStatus_predictedStrug_idx', 'struggle_predictions'),
    ('struggle_predictions_userId_topicId_predictionDate_idx', 'struggle_predictions'),
    ('recommendations_userId_status_priorityScore_idx', 'recommendations'),
    ('recommendations_userId_createdAt_idx', 'recommendations'),
    ('personalization_configs_userId_context_isActive_idx', 'personalization_configs'),
    ('personalization_configs_userId_avgReward_idx', 'personalization_configs'))
SELECT 'index ' || e.indexname AS check,
       coalesce(i.tablename = e.tablename AND x.indisvalid AND x.indisready, false) AS ok,
       coalesce(i.indexdef || CASE WHEN x.indisvalid THEN '' ELSE ' (INVALID)' END, 'missing') AS detail
FROM expected e
LEFT JOIN pg_indexes i ON i.schemaname = 'public' AND i.indexname = e.indexname
LEFT JOIN pg_index x ON x.indexrelid = format('%I.%I', i.schemaname, i.indexname)::regclass;
