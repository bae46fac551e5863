-- Splitter case: a semicolon inside a standard string literal.
CREATE TABLE "splitter_string" ("id" TEXT NOT NULL, "separator" TEXT NOT NULL DEFAULT 'a;b');
