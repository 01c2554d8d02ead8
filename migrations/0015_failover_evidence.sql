-- Issue 15: decisions that noise cannot fool, and guard rails.

-- Probe rounds in a row in which no endpoint of the zone answered at all
-- (the checker's "stops answering" signal, which fails a zone at once).
ALTER TABLE health_reports ADD COLUMN unanswered_rounds integer NOT NULL DEFAULT 0;

-- Guard rails that shaped the stored weights (capacity, ramped failback),
-- shown by /status beside the weights they explain.
ALTER TABLE effective_weights ADD COLUMN guard_rails jsonb NOT NULL DEFAULT '[]'::jsonb;
