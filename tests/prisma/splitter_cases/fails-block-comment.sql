-- Splitter case: a semicolon inside a /* */ comment.
CREATE TABLE "splitter_block_comment" (
    "id" TEXT NOT NULL /* the key; a cuid */
);
