-- Webhook signature verification per code revision (secrets included: never returned by the API),
-- and which scheme verified each task.
ALTER TABLE code_revisions ADD COLUMN webhook_verify JSONB;
ALTER TABLE tasks ADD COLUMN verified_by TEXT;
