-- The Epic 5 foreign key exists, points at personalization_experiments(id),
-- cascades on delete and is validated (a NOT VALID constraint does not prove
-- existing rows are consistent).
SELECT 'foreign key experiment_assignments_experimentId_fkey' AS check,
       coalesce(bool_and(k.contype = 'f'
                AND k.conrelid = 'public.experiment_assignments'::regclass
                AND k.confrelid = 'public.personalization_experiments'::regclass
                AND k.confdeltype = 'c'
                AND k.convalidated), false) AS ok,
       coalesce(string_agg(pg_get_constraintdef(k.oid)
                || CASE WHEN k.convalidated THEN '' ELSE ' (NOT VALIDATED)' END, '; '), 'missing') AS detail
FROM (SELECT 1) one
LEFT JOIN pg_constraint k ON k.conname = 'experiment_assignments_experimentId_fkey'
                         AND k.connamespace = 'public'::regnamespace;
