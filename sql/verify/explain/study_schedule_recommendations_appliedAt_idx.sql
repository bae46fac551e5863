-- expect-index: study_schedule_recommendations_appliedAt_idx
SELECT id FROM study_schedule_recommendations WHERE "appliedAt" >= now() - interval '1 day';
