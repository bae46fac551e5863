-- Splitter case: a semicolon inside a quoted identifier.
CREATE TABLE "splitter;identifier" ("id" TEXT NOT NULL);
