-- Splitter case: a semicolon inside a -- comment, with words after it.
-- Defaults are empty strings; the application fills them in.
CREATE TABLE "splitter_line_comment" ("id" TEXT NOT NULL, "note" TEXT NOT NULL DEFAULT '');
