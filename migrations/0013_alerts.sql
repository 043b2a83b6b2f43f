-- Alerts herald raises about itself (src/alerts.rs): one row per rule and subject (a provider, a queue) while its
-- condition holds, or held until it was resolved. Written by the fleet's alert evaluator (one elected process), so
-- an alert fires once and clears once however many processes run and whichever of them evaluates.
CREATE TABLE herald_alerts (
    rule            text        NOT NULL,
    subject         text        NOT NULL,
    -- pending: the condition holds, not yet for long enough; firing; resolved (kept a day, for `herald status`)
    state           text        NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    summary         text        NOT NULL,
    since           timestamptz NOT NULL DEFAULT now(),
    fired_at        timestamptz,
    resolved_at     timestamptz,
    -- whether the notification of the current state went out (a failed send is retried on the next evaluation)
    notified        boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (rule, subject)
);
