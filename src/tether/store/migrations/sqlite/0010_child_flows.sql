-- tether schema v10: child flows, a flow started from flow code as a recorded call.
--
-- A parent waits for its child with a wait of kind 'child' named 'child:<child id>'. The
-- child's end resolves that wait with its outcome and makes a waiting parent runnable, in the
-- statement (so the transaction) that records the end, whatever the code path: a finish, a
-- cancel, a cancelled suspension. A crash can therefore never leave a parent waiting for a
-- child that has ended. The parent is made runnable first, while the wait is still pending.

-- Children of an execution: `executions list --parent`, Client.get(), cancelling a tree.
CREATE INDEX IF NOT EXISTS executions_by_parent
    ON executions (parent_id, created_at) WHERE parent_id IS NOT NULL;

CREATE TRIGGER executions_child_end
    AFTER UPDATE OF status ON executions
    FOR EACH ROW WHEN NEW.parent_id IS NOT NULL
        AND NEW.status IN ('succeeded', 'failed', 'cancelled')
        AND OLD.status NOT IN ('succeeded', 'failed', 'cancelled')
BEGIN
    UPDATE executions SET status = 'queued', wake_at = NULL, updated_at = NEW.updated_at
        WHERE id = NEW.parent_id AND status = 'waiting'
          AND EXISTS (SELECT 1 FROM waits WHERE execution_id = NEW.parent_id
                      AND name = 'child:' || NEW.id AND status = 'pending');
    UPDATE waits SET status = 'resolved',
                     value = json_object('status', NEW.status, 'result', NEW.result,
                                         'error', NEW.error),
                     resolved_by = NEW.id, resolved_at = NEW.updated_at
        WHERE execution_id = NEW.parent_id AND name = 'child:' || NEW.id
          AND status = 'pending';
END;
