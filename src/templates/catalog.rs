//! Stored template versions (`herald_templates`), the sync of `templates/` at start, and the snapshot of the
//! latest versions each process renders with.
//!
//! Versions are immutable, as workflow versions are: re-saving the same content is a no-op, other content under a
//! stored version is refused. A process keeps one [`Snapshot`] of the latest version of every name and looks
//! again at most every [`REFRESH`] (one cheap statement; the documents are reloaded only when one was added).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::document::{self, Document, Kind};
use super::render::Snapshot;
use super::{TemplatesError, sql};
use crate::audit::{self, Actor};

/// How stale a process's snapshot may be: a new version reaches every process within this.
pub const REFRESH: Duration = Duration::from_secs(5);

/// The most names the catalogue holds (the snapshot of every latest version lives in each process).
pub const MAX_NAMES: i64 = 1_000;

/// What saving one document did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Saved {
    Created,
    /// The same content was already stored under this version.
    Unchanged,
}

/// One stored name: its latest version.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct TemplateSummary {
    pub name: String,
    #[sqlx(rename = "version")]
    pub latest_version: i32,
    /// `template`, `layout` or `partial`.
    pub kind: String,
    pub versions: i64,
    pub description: Option<String>,
    pub source: String,
    pub created_at: DateTime<Utc>,
}

/// A template rendered for every channel it has (see [`Catalogue::preview`]).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Preview {
    pub name: String,
    pub version: i32,
    /// The locale asked for (`null`: the default variants).
    pub locale: Option<String>,
    /// Each channel's rendered message content (the fields the channel sends: `subject`, `html`, `body`, ...)
    /// and the locale variant used.
    pub channels: std::collections::BTreeMap<String, super::Rendered>,
}

/// The catalogue of one database, with this process's snapshot of it.
#[derive(Clone)]
pub struct Catalogue {
    pool: PgPool,
    snapshot: Arc<Mutex<Option<Cached>>>,
    /// Held while one caller reloads, so concurrent senders wait for its snapshot instead of each reloading.
    refreshing: Arc<tokio::sync::Mutex<()>>,
}

struct Cached {
    snapshot: Arc<Snapshot>,
    stamp: (i64, Option<DateTime<Utc>>),
    checked: Instant,
}

impl Catalogue {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            snapshot: Arc::default(),
            refreshing: Arc::default(),
        }
    }

    /// The latest version of every document, at most [`REFRESH`] old.
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, TemplatesError> {
        if let Some(fresh) = self.cached(true) {
            return Ok(fresh);
        }
        let _refreshing = self.refreshing.lock().await;
        // Another caller may have reloaded while this one waited.
        if let Some(fresh) = self.cached(true) {
            return Ok(fresh);
        }
        let cached_stamp = {
            let cached = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
            cached.as_ref().map(|c| c.stamp)
        };
        let stamp: (i64, Option<DateTime<Utc>>) =
            sqlx::query_as(sql::STAMP).fetch_one(&self.pool).await?;
        if cached_stamp == Some(stamp) {
            let mut cached = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cached.as_mut() {
                c.checked = Instant::now();
                return Ok(Arc::clone(&c.snapshot));
            }
        }
        let rows: Vec<(String, i32, serde_json::Value)> = sqlx::query_as(sql::LATEST_DOCUMENTS)
            .fetch_all(&self.pool)
            .await?;
        // Validating up to 1,000 documents is CPU work: off the async executor.
        let snapshot = tokio::task::spawn_blocking(move || Arc::new(Snapshot::new(loaded(rows))))
            .await
            .map_err(|e| TemplatesError::Io(e.to_string()))?;
        let mut cached = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        *cached = Some(Cached {
            snapshot: Arc::clone(&snapshot),
            stamp,
            checked: Instant::now(),
        });
        Ok(snapshot)
    }

    /// A snapshot checked against the database now (a template a send did not find may have been stored a moment
    /// ago): one small query, and a reload only if a version was added since.
    pub async fn fresh_snapshot(&self) -> Result<Arc<Snapshot>, TemplatesError> {
        {
            let mut cached = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cached.as_mut() {
                match Instant::now().checked_sub(REFRESH) {
                    Some(old) => c.checked = old,
                    None => *cached = None,
                }
            }
        }
        self.snapshot().await
    }

    /// The cached snapshot, if any (and if `young`, only if checked within [`REFRESH`]).
    fn cached(&self, young: bool) -> Option<Arc<Snapshot>> {
        let cached = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        cached
            .as_ref()
            .filter(|c| !young || c.checked.elapsed() < REFRESH)
            .map(|c| Arc::clone(&c.snapshot))
    }

    /// Forgets the snapshot (this process just stored a version: its next render sees it).
    fn invalidate(&self) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Validates and stores one document; `source` names it in errors (a file path, or `request`). A new version
    /// is audited as `template.save`.
    pub async fn save(
        &self,
        actor: &Actor,
        source: &str,
        raw: &serde_json::Value,
    ) -> Result<(Document, Saved), TemplatesError> {
        let document = document::validate(source, raw).map_err(TemplatesError::Invalid)?;
        let saved = self.store(actor, &document, source).await?;
        self.invalidate();
        Ok((document, saved))
    }

    async fn store(
        &self,
        actor: &Actor,
        document: &Document,
        source: &str,
    ) -> Result<Saved, TemplatesError> {
        // Bounded statements: a save stuck behind a lock fails instead of holding its caller.
        let mut tx = crate::db::begin_bounded(&self.pool, &[]).await?;
        let saved = store_in(&mut tx, actor, document, source).await?;
        tx.commit().await?;
        Ok(saved)
    }

    pub async fn list(&self) -> Result<Vec<TemplateSummary>, TemplatesError> {
        Ok(sqlx::query_as(sql::LIST_TEMPLATES)
            .fetch_all(&self.pool)
            .await?)
    }

    /// The latest version of one name, as stored.
    pub async fn latest(&self, name: &str) -> Result<(i32, serde_json::Value), TemplatesError> {
        sqlx::query_as(sql::LATEST_DOCUMENT)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| TemplatesError::NotFound(format!("template `{name}`")))
    }

    /// Renders every channel of the latest version of template `name` for `locale` with `data` (default: its
    /// `sample`), without sending: what `POST /v1/templates/{name}/preview` answers. Any variant that fails makes
    /// the whole preview fail, naming the variant and the variable.
    pub async fn preview(
        &self,
        name: &str,
        locale: Option<&str>,
        data: Option<serde_json::Value>,
    ) -> Result<Preview, TemplatesError> {
        let snapshot = self.snapshot().await?;
        let document = snapshot
            .document(name)
            .filter(|d| d.kind == Kind::Template)
            .ok_or_else(|| TemplatesError::NotFound(format!("template `{name}`")))?;
        let data = data.unwrap_or_else(|| document.sample.clone());
        let context = minijinja::Value::from(minijinja::value::Serde(&data));
        let mut channels = std::collections::BTreeMap::new();
        let mut problems = Vec::new();
        super::language::off_the_executor_if(true, || {
            for channel in document.channels.keys() {
                match snapshot.render(name, channel, locale, &context) {
                    Ok(rendered) => {
                        channels.insert(channel.clone(), rendered);
                    }
                    Err(e) => problems.push(e.to_string()),
                }
            }
        });
        if !problems.is_empty() {
            return Err(TemplatesError::Render(problems.join("; ")));
        }
        Ok(Preview {
            name: name.to_string(),
            version: document.version,
            locale: locale.map(str::to_string),
            channels,
        })
    }

    /// Checks every file in `dir` (as [`check_dir`]) and stores them in one transaction, so nothing is stored
    /// unless every one is valid and storable; answers each file's outcome.
    pub async fn sync_dir(
        &self,
        actor: &Actor,
        dir: &Path,
    ) -> Result<Vec<(String, String, i32, Saved)>, TemplatesError> {
        let documents = check_dir(dir)?;
        // Bounded statements: a save stuck behind a lock fails instead of holding its caller.
        let mut tx = crate::db::begin_bounded(&self.pool, &[]).await?;
        let mut outcomes = Vec::new();
        let mut problems = Vec::new();
        // Layouts and partials first: a template's layout must be stored when the template is.
        let mut ordered: Vec<&(String, Document)> = documents.iter().collect();
        ordered.sort_by_key(|(_, d)| d.kind == Kind::Template);
        for (source, document) in ordered {
            match store_in(&mut tx, actor, document, source).await {
                Ok(saved) => outcomes.push((
                    source.clone(),
                    document.name.clone(),
                    document.version,
                    saved,
                )),
                Err(TemplatesError::Invalid(mut found)) => problems.append(&mut found),
                Err(e @ TemplatesError::VersionConflict { .. }) => {
                    problems.push(format!("{source}: {e}"))
                }
                Err(other) => return Err(other),
            }
        }
        if !problems.is_empty() {
            return Err(TemplatesError::Invalid(problems));
        }
        tx.commit().await?;
        self.invalidate();
        Ok(outcomes)
    }
}

/// Stores one validated document in the caller's transaction: refused if the catalogue is full, if the name's
/// latest version is of another kind (a layout cannot become a partial under the templates that use it), or if a
/// template's layout is not a stored layout. A new version is audited as `template.save`.
async fn store_in(
    tx: &mut sqlx::PgConnection,
    actor: &Actor,
    document: &Document,
    source: &str,
) -> Result<Saved, TemplatesError> {
    let (names, known): (i64, bool) = sqlx::query_as(sql::COUNT_NAMES)
        .bind(&document.name)
        .fetch_one(&mut *tx)
        .await?;
    if !known && names >= MAX_NAMES {
        return Err(TemplatesError::Invalid(vec![format!(
            "{source}: the catalogue holds {MAX_NAMES} names, its most"
        )]));
    }
    let kind: Option<String> = sqlx::query_scalar(sql::LATEST_KIND)
        .bind(&document.name)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(kind) = kind
        && kind != document.kind.as_str()
    {
        return Err(TemplatesError::Invalid(vec![format!(
            "{source}: `kind`: `{}` is a {kind}; a new version cannot be a {}",
            document.name,
            document.kind.as_str()
        )]));
    }
    if let Some(layout) = &document.layout {
        let kind: Option<String> = sqlx::query_scalar(sql::LATEST_KIND)
            .bind(layout)
            .fetch_optional(&mut *tx)
            .await?;
        if kind.as_deref() != Some(Kind::Layout.as_str()) {
            return Err(TemplatesError::Invalid(vec![format!(
                "{source}: `layout`: no layout `{layout}` is stored"
            )]));
        }
    }
    let canonical = serde_json::to_vec(&document.raw).unwrap_or_default();
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(&canonical)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let (inserted, same): (bool, bool) = sqlx::query_as(sql::SAVE_TEMPLATE)
        .bind(&document.name)
        .bind(document.version)
        .bind(document.kind.as_str())
        .bind(&document.raw)
        .bind(&digest)
        .bind(source)
        .fetch_one(&mut *tx)
        .await?;
    let saved = match (inserted, same) {
        (true, _) => Saved::Created,
        (false, true) => Saved::Unchanged,
        (false, false) => {
            return Err(TemplatesError::VersionConflict {
                name: document.name.clone(),
                version: document.version,
            });
        }
    };
    if saved == Saved::Created {
        let target = format!("template:{}@{}", document.name, document.version);
        let details = serde_json::json!({ "source": source, "kind": document.kind.as_str() });
        audit::record(&mut *tx, actor, "template.save", &target, details)
            .await
            .map_err(|e| TemplatesError::Io(e.to_string()))?;
    }
    Ok(saved)
}

/// The stored documents that load (one stored by a newer version may not: logged and left out), without the copy
/// of their JSON (the snapshot needs only the parsed form).
fn loaded(rows: Vec<(String, i32, serde_json::Value)>) -> Vec<Document> {
    rows.into_iter()
        .filter_map(|(name, version, raw)| {
            let source = format!("stored template {name} v{version}");
            match document::validate(&source, &raw) {
                Ok(mut document) => {
                    document.raw = serde_json::Value::Null;
                    Some(document)
                }
                Err(problems) => {
                    tracing::warn!(template = %name, version, ?problems, "a stored template does not load");
                    None
                }
            }
        })
        .collect()
}

/// Reads, validates and renders every document in `dir` without a database (`herald templates check`): each
/// template is rendered for every channel and locale with its `sample` data, against the layouts and partials of
/// the same folder. Answers the documents, or every problem in every file.
pub fn check_dir(dir: &Path) -> Result<Vec<(String, Document)>, TemplatesError> {
    let (documents, problems) = check_dir_all(dir)?;
    if problems.is_empty() {
        Ok(documents)
    } else {
        Err(TemplatesError::Invalid(problems))
    }
}

/// The documents of a folder that are valid (with their files), and every problem found.
pub type Checked = (Vec<(String, Document)>, Vec<String>);

/// [`check_dir`], answering the documents that are valid and every problem found (only an unreadable folder is
/// an error): what `herald templates check` reports, with the workflows' references checked against them.
pub fn check_dir_all(dir: &Path) -> Result<Checked, TemplatesError> {
    let mut problems = Vec::new();
    let mut documents: Vec<(String, Document)> = Vec::new();
    for (source, text) in read_files(dir, &mut problems)? {
        let raw = match document::parse_text(&source, &text) {
            Ok(raw) => raw,
            Err(mut found) => {
                problems.append(&mut found);
                continue;
            }
        };
        match document::validate(&source, &raw) {
            Ok(document) => {
                if let Some((other, _)) = documents.iter().find(|(_, d)| d.name == document.name) {
                    problems.push(format!(
                        "{source}: `{}` is also defined in {other}",
                        document.name
                    ));
                }
                documents.push((source, document));
            }
            Err(mut found) => problems.append(&mut found),
        }
    }
    for (source, document) in &documents {
        if let Some(layout) = &document.layout
            && !documents
                .iter()
                .any(|(_, d)| d.kind == Kind::Layout && &d.name == layout)
        {
            problems.push(format!(
                "{source}: `layout`: no layout `{layout}` in {}",
                dir.display()
            ));
        }
    }
    // A template whose layout is missing (reported above) is rendered without it, for its own problems.
    let has_layout = |name: &str| {
        documents
            .iter()
            .any(|(_, d)| d.kind == Kind::Layout && d.name == name)
    };
    let renderable: Vec<Document> = documents
        .iter()
        .map(|(_, d)| {
            let mut d = d.clone();
            if d.layout.as_deref().is_some_and(|l| !has_layout(l)) {
                d.layout = None;
            }
            d
        })
        .collect();
    let snapshot = Snapshot::new(renderable.clone());
    for ((source, _), document) in documents.iter().zip(&renderable) {
        if document.kind == Kind::Template {
            problems.extend(
                render_all(&snapshot, document)
                    .into_iter()
                    .map(|problem| format!("{source}: {problem}")),
            );
        }
    }
    Ok((documents, problems))
}

/// Renders a template for every channel and locale (and the default) with its sample data; answers the problems.
pub fn render_all(snapshot: &Snapshot, document: &Document) -> Vec<String> {
    let context = minijinja::Value::from(minijinja::value::Serde(&document.sample));
    let mut locales: Vec<Option<&str>> = vec![None];
    locales.extend(document.locales.keys().map(|tag| Some(tag.as_str())));
    let mut problems = Vec::new();
    for channel in document.channels.keys() {
        for locale in &locales {
            if let Err(e) = snapshot.render(&document.name, channel, *locale, &context) {
                let at = locale.map_or("the default".to_string(), |l| format!("locale {l}"));
                problems.push(format!("{at}: {e}"));
            }
        }
    }
    problems
}

/// The `.yaml`, `.yml` and `.json` files of a folder, sorted by name, with their text; a file too large to be a
/// document is a problem, and the others are still read.
fn read_files(
    dir: &Path,
    problems: &mut Vec<String>,
) -> Result<Vec<(String, String)>, TemplatesError> {
    let read_error = |e: std::io::Error| TemplatesError::Io(format!("{}: {e}", dir.display()));
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if path.is_file() && matches!(extension, "yaml" | "yml" | "json") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let size = std::fs::metadata(&path).map_err(read_error)?.len();
        let source = path.display().to_string();
        if size > (document::MAX_DOCUMENT_BYTES as u64) * 4 {
            problems.push(format!(
                "{source}: the file is {size} bytes, too large for a document"
            ));
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(read_error)?;
        files.push((source, text));
    }
    Ok(files)
}
