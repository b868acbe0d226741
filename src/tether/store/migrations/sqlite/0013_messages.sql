-- tether schema v13: messages, input sent to a wait before the flow reaches it (`send`).
--
-- One message per wait name of an execution (wait names are unique per execution), kept
-- until the flow reaches the wait and delivers it ('delivered') or finds that it does not
-- match the wait's schema ('rejected', with why). A send to a wait that is pending already
-- resolves it at once and writes no message. While a message is 'sent' and its wait is
-- pending (the flow is delivering it), input to that wait is refused, so of a send and an
-- input exactly one wins.
CREATE TABLE messages (
    execution_id TEXT NOT NULL,
    name         TEXT NOT NULL,
    value        TEXT NOT NULL,
    status       TEXT NOT NULL,
    sent_by      TEXT,
    sent_at      REAL NOT NULL,
    error        TEXT,
    delivered_at REAL,
    PRIMARY KEY (execution_id, name)
);
