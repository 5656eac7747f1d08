-- Cron expressions for schedules (with seconds: "sec min hour day month weekday [year]"), an
-- addition to IronWorker's run_every.
ALTER TABLE schedules ADD COLUMN cron TEXT;
