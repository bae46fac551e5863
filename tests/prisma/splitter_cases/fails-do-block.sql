-- Splitter case: a DO block with a tagged dollar quote.
DO $body$ BEGIN PERFORM 1; END $body$;
