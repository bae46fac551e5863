-- Splitter case: a comment that ends with a semicolon, inside a statement.
CREATE TABLE "splitter_comment_in_statement" (
    "id" TEXT NOT NULL -- a cuid, never reused;
);
