-- Reverses the expand migration beside this file (run by rollback, never by a deploy).
DROP TRIGGER IF EXISTS "behavioral_events_fill_eventDate" ON "behavioral_events";
DROP FUNCTION IF EXISTS "behavioral_events_fill_eventDate"();
ALTER TABLE "behavioral_events" DROP COLUMN IF EXISTS "eventDate";
