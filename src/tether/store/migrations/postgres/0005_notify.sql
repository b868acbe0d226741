-- tether schema v5 (PostgreSQL): wake workers the moment an execution becomes runnable.
-- Any path that queues an unleased execution (a new start, input to a wait, a hand-back,
-- a retry) fires the trigger, so no code path can forget to notify.

CREATE FUNCTION tether_notify_runnable() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('tether_runnable', NEW.queue);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER executions_runnable
    AFTER INSERT OR UPDATE OF status, lease_token ON executions
    FOR EACH ROW WHEN (NEW.status = 'queued' AND NEW.lease_token IS NULL)
    EXECUTE FUNCTION tether_notify_runnable();
