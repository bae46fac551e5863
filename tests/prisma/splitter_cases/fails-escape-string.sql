-- Splitter case: a semicolon inside an E'' string after an escaped quote.
CREATE TABLE "splitter_escape_string" ("id" TEXT NOT NULL, "label" TEXT NOT NULL DEFAULT E'it\'s;fine');
