-- Splitter case: a SQL-standard function body, whose statements end with semicolons inside one CREATE FUNCTION.
CREATE FUNCTION "splitter_atomic"() RETURNS integer LANGUAGE sql
BEGIN ATOMIC
    SELECT 1;
END;
