//! The catalogue's statements (`herald_templates`, see `migrations/0021_templates.sql`).

/// Stores version ($1 name, $2 version) of a document ($3 kind, $4 document, $5 digest, $6 source) unless that
/// version exists; answers whether it was inserted and whether the stored one has the same content. On a conflict
/// the existing row is locked and read (`DO UPDATE` to itself), so a version another transaction inserted a moment
/// ago is compared too, never taken for this one.
pub const SAVE_TEMPLATE: &str = "
INSERT INTO herald_templates AS t (name, version, kind, document, digest, source)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (name, version) DO UPDATE SET digest = t.digest
RETURNING (xmax = 0) AS inserted, digest = $5 AS same_content";

/// The kind of name $1's latest version (none if the name is new).
pub const LATEST_KIND: &str =
    "SELECT kind FROM herald_templates WHERE name = $1 ORDER BY version DESC LIMIT 1";

/// How many names the catalogue holds, and whether name $1 is one of them.
pub const COUNT_NAMES: &str = "
SELECT count(DISTINCT name), bool_or(name = $1) IS TRUE FROM herald_templates";

/// What changes whenever a version is added: a cheap look before reloading the snapshot.
pub const STAMP: &str = "SELECT count(*), max(created_at) FROM herald_templates";

/// The latest version of every name: (name, version, document).
pub const LATEST_DOCUMENTS: &str = "
SELECT DISTINCT ON (name) name, version, document FROM herald_templates ORDER BY name, version DESC";

/// The latest version of each name, for listing.
pub const LIST_TEMPLATES: &str = "
SELECT DISTINCT ON (t.name) t.name, t.version, t.kind, t.document->>'description' AS description, t.source,
       t.created_at, (SELECT count(*) FROM herald_templates v WHERE v.name = t.name) AS versions
FROM herald_templates t ORDER BY t.name, t.version DESC";

/// The latest version of name $1: (version, document).
pub const LATEST_DOCUMENT: &str = "
SELECT version, document FROM herald_templates WHERE name = $1 ORDER BY version DESC LIMIT 1";
