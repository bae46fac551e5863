-- The two Epic 5 columns exist in schema public with the types Prisma maps
-- Json? and DateTime? to, and are nullable (optional fields).
WITH expected(table_name, column_name, data_type) AS (VALUES
    ('experiment_assignments', 'metrics', 'jsonb'),
    ('study_schedule_recommendations', 'appliedAt', 'timestamp(3) without time zone'))
SELECT 'column ' || e.table_name || '.' || e.column_name AS check,
       coalesce(format_type(a.atttypid, a.atttypmod) = e.data_type AND NOT a.attnotnull, false) AS ok,
       coalesce(format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE ' NULL' END,
                'missing') AS detail
FROM expected e
LEFT JOIN pg_attribute a ON a.attrelid = to_regclass(format('public.%I', e.table_name))
                        AND a.attname = e.column_name AND NOT a.attisdropped;
