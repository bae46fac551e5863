-- Reverses the contract migration beside this file (run by rollback, never by a deploy).
DROP INDEX CONCURRENTLY IF EXISTS "behavioral_events_eventDate_idx";
ALTER TABLE "behavioral_events" ALTER COLUMN "eventDate" DROP NOT NULL;
