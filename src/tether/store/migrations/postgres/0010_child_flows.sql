-- tether schema v10 (PostgreSQL): child flows, a flow started from flow code as a recorded call.
--
-- A parent waits for its child with a wait of kind 'child' named 'child:<child id>'. The
-- child's end resolves that wait with its outcome and makes a waiting parent runnable, in the
-- statement (so the transaction) that records the end, whatever the code path: a finish, a
-- cancel, a cancelled suspension. A crash can therefore never leave a parent waiting for a
-- child that has ended.
--
-- Locks: the parent row is locked first (as suspend() and resolve_wait() do), then the wait
-- is updated with a fresh statement, so a parent suspending at that moment either sees the
-- wait resolved (and runs again) or is made runnable here. The order is always child, then
-- parent; nothing locks a parent and then its child.

CREATE INDEX IF NOT EXISTS executions_by_parent
    ON executions (parent_id, created_at) WHERE parent_id IS NOT NULL;

CREATE FUNCTION tether_child_end() RETURNS trigger AS $$
BEGIN
    PERFORM 1 FROM executions WHERE id = NEW.parent_id FOR UPDATE;
    UPDATE waits SET status = 'resolved',
                     value = json_build_object('status', NEW.status, 'result', NEW.result,
                                               'error', NEW.error)::text,
                     resolved_by = NEW.id, resolved_at = NEW.updated_at
        WHERE execution_id = NEW.parent_id AND name = 'child:' || NEW.id
          AND status = 'pending';
    IF FOUND THEN
        UPDATE executions SET status = 'queued', wake_at = NULL, updated_at = NEW.updated_at
            WHERE id = NEW.parent_id AND status = 'waiting';
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER executions_child_end
    AFTER UPDATE OF status ON executions
    FOR EACH ROW WHEN (NEW.parent_id IS NOT NULL
        AND NEW.status IN ('succeeded', 'failed', 'cancelled')
        AND OLD.status NOT IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION tether_child_end();
