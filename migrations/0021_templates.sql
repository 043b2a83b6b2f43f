-- The template catalogue (src/templates): message content by name, versioned like workflows. A version is
-- immutable once stored (`digest` is the SHA-256 of its canonical JSON: re-saving the same content is a no-op,
-- other content under the same version is refused). `kind` is `template`, `layout` or `partial`; names are
-- shared by the three kinds.
CREATE TABLE herald_templates (
    name       text        NOT NULL,
    version    integer     NOT NULL CHECK (version > 0),
    kind       text        NOT NULL CHECK (kind IN ('template', 'layout', 'partial')),
    document   jsonb       NOT NULL,
    digest     text        NOT NULL,
    source     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);
