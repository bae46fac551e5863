-- Expand: behavioral_events gets "eventDate", the UTC calendar day of "timestamp" (Prisma keeps
-- DateTime as UTC in a timestamp(3) column, so the day is its plain cast: no time zone is involved).
-- Nullable for now: the existing rows are filled by backfill.yaml beside this file, in throttled
-- batches, and the next migration (the contract) makes it NOT NULL once none is left.
ALTER TABLE "behavioral_events" ADD COLUMN "eventDate" DATE;

-- Rows the application writes meanwhile are filled as they are written.
CREATE FUNCTION "behavioral_events_fill_eventDate"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW."eventDate" := NEW."timestamp"::date;
  RETURN NEW;
END
$$;

CREATE TRIGGER "behavioral_events_fill_eventDate" BEFORE INSERT OR UPDATE OF "timestamp" ON "behavioral_events"
  FOR EACH ROW EXECUTE FUNCTION "behavioral_events_fill_eventDate"();
