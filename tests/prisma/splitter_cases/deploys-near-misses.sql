-- Splitter near misses: Prisma cuts at each semicolon below and still deploys this file.
-- A comment line between statements that ends with a semicolon;
-- a cut followed only by another comment; -- like this
CREATE TABLE "splitter_near_miss" (
    "id" TEXT NOT NULL,            -- a trailing comment without one
    "label" TEXT NOT NULL DEFAULT 'no semicolon here',
    "price" TEXT NOT NULL DEFAULT 'a' || chr(59) || 'b',
    "escaped" TEXT NOT NULL DEFAULT E'x\073y'
);;
CREATE FUNCTION "splitter_near_miss_one"() RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$; -- ends here;
