-- Splitter case: a PL/pgSQL function: its dollar-quoted body has one semicolon per statement.
CREATE FUNCTION "splitter_touch"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW."updatedAt" := now();
    RETURN NEW;
END
$$;
