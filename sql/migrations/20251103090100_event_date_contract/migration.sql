-- Contract: every row has its "eventDate" (the backfill of the migration before this one is done, and
-- the deployment refuses this migration while it is not), so the column becomes NOT NULL and indexed.
-- As Prisma writes it. The online plan validates a CHECK first and builds the index CONCURRENTLY.
ALTER TABLE "behavioral_events" ALTER COLUMN "eventDate" SET NOT NULL;

CREATE INDEX "behavioral_events_eventDate_idx" ON "behavioral_events"("eventDate");
