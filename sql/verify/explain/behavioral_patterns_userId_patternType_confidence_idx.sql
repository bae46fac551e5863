-- expect-index: behavioral_patterns_userId_patternType_confidence_idx
SELECT id FROM behavioral_patterns WHERE "userId" = 'user_000042' AND "patternType" = 'OPTIMAL_STUDY_TIME' AND confidence >= 0.7;
