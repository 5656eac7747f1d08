-- A webhook body too large to travel in a NATS message is kept in the JetStream object store
-- <PREFIX>_PAYLOADS; the task holds its name.
ALTER TABLE tasks ADD COLUMN payload_ref TEXT;
