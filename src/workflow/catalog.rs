//! The catalog of workflow versions: stored in `herald_workflows`, compiled once per process and cached.
//!
//! Versions are immutable. Syncing a definition whose (name, version) is stored with other content is refused:
//! runs in flight keep executing the version they started on, so that version must never change under them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use sqlx::PgPool;

use super::WorkflowError;
use super::definition::{self, DefinitionError, Workflow};
use super::sql;
use crate::audit::{self, Actor};

/// What saving one definition did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Saved {
    Created,
    /// The same content was already stored under this version.
    Unchanged,
}

/// One stored workflow: its latest version.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct WorkflowSummary {
    pub name: String,
    #[sqlx(rename = "version")]
    pub latest_version: i32,
    pub versions: i64,
    pub description: Option<String>,
    pub source: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// `SAVE_WORKFLOW`'s answer.
#[derive(sqlx::FromRow)]
struct SaveRow {
    inserted: bool,
    /// The stored version has the content just sent.
    same_content: bool,
}

/// (name, version) -> compiled workflow.
type CompiledVersions = HashMap<(String, i32), Arc<Workflow>>;

/// Compiled versions, shared by every node job of this process.
#[derive(Clone)]
pub struct Catalog {
    pool: PgPool,
    compiled: Arc<RwLock<CompiledVersions>>,
}

impl Catalog {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            compiled: Arc::default(),
        }
    }

    /// The version a run started on.
    pub async fn version(&self, name: &str, version: i32) -> Result<Arc<Workflow>, WorkflowError> {
        if let Some(found) = self.cached(name, version) {
            return Ok(found);
        }
        let definition = sqlx::query_scalar(sql::LOAD_WORKFLOW)
            .bind(name)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(format!("workflow {name} version {version}")))?;
        self.remember(name, version, definition)
    }

    /// The newest version, which new runs start on.
    pub async fn latest(&self, name: &str) -> Result<Arc<Workflow>, WorkflowError> {
        // Only the number travels on each call; the definition is fetched once per version and process.
        let version = self
            .latest_version(name)
            .await?
            .ok_or_else(|| WorkflowError::NotFound(format!("workflow {name}")))?;
        self.version(name, version).await
    }

    /// The newest version of one workflow, if any (a statement that gets a generic plan, unlike
    /// `LATEST_VERSIONS`' `name = ANY($1)`).
    async fn latest_version(&self, name: &str) -> Result<Option<i32>, WorkflowError> {
        Ok(sqlx::query_scalar(sql::LATEST_VERSION)
            .bind(name)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The newest version of each workflow named (one statement); names with no stored version are left out.
    pub async fn latest_versions(
        &self,
        names: &[&str],
    ) -> Result<std::collections::HashMap<String, i32>, WorkflowError> {
        // One name (the usual batch) takes the statement that gets a generic plan.
        if let [name] = names {
            let version = self.latest_version(name).await?;
            return Ok(version.map(|v| (name.to_string(), v)).into_iter().collect());
        }
        let rows: Vec<(String, i32)> = sqlx::query_as(sql::LATEST_VERSIONS)
            .bind(names)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().collect())
    }

    fn cached(&self, name: &str, version: i32) -> Option<Arc<Workflow>> {
        let compiled = self.compiled.read().unwrap_or_else(|e| e.into_inner());
        compiled.get(&(name.to_string(), version)).cloned()
    }

    fn remember(
        &self,
        name: &str,
        version: i32,
        definition: serde_json::Value,
    ) -> Result<Arc<Workflow>, WorkflowError> {
        let source = format!("stored workflow {name} v{version}");
        let workflow =
            Arc::new(definition::compile(&source, &definition).map_err(WorkflowError::Invalid)?);
        let mut compiled = self.compiled.write().unwrap_or_else(|e| e.into_inner());
        compiled.insert((name.to_string(), version), Arc::clone(&workflow));
        Ok(workflow)
    }

    /// Validates and stores one definition. `source` names it in errors (a file path, or `request`).
    /// A new version is audited as `workflow.save`.
    pub async fn save(
        &self,
        actor: &Actor,
        source: &str,
        definition: &serde_json::Value,
    ) -> Result<(Arc<Workflow>, Saved), WorkflowError> {
        let workflow = definition::compile(source, definition).map_err(WorkflowError::Invalid)?;
        let workflow = self.check_if_new(source, workflow).await?;
        let saved = self.store(actor, &workflow, source).await?;
        Ok((Arc::new(workflow), saved))
    }

    /// Stores a compiled version (its `definition` as it was given).
    async fn store(
        &self,
        actor: &Actor,
        workflow: &Workflow,
        source: &str,
    ) -> Result<Saved, WorkflowError> {
        let mut tx = self.pool.begin().await?;
        let mut row = save_statement(&mut tx, workflow, source).await?;
        if !row.inserted && !row.same_content {
            // Another process may have inserted this version after our statement's snapshot was taken (two
            // processes syncing at start-up): look again with a fresh snapshot (each statement of a READ
            // COMMITTED transaction takes its own) before calling it a conflict.
            row = save_statement(&mut tx, workflow, source).await?;
        }
        let saved = match (row.inserted, row.same_content) {
            (true, _) => Saved::Created,
            (false, true) => Saved::Unchanged,
            (false, false) => {
                return Err(WorkflowError::VersionConflict {
                    name: workflow.name.clone(),
                    version: workflow.version,
                });
            }
        };
        if saved == Saved::Created {
            let target = format!("workflow:{}@{}", workflow.name, workflow.version);
            let details = serde_json::json!({ "source": source });
            audit::record(&mut *tx, actor, "workflow.save", &target, details).await?;
        }
        tx.commit().await?;
        Ok(saved)
    }

    pub async fn list(&self) -> Result<Vec<WorkflowSummary>, WorkflowError> {
        Ok(sqlx::query_as(sql::LIST_WORKFLOWS)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Loads every `*.yaml`, `*.yml` and `*.json` file in `dir`, validates them all, and stores them only if
    /// every one is valid (a half-synced folder would be worse than none). Returns each file's outcome.
    pub async fn sync_dir(
        &self,
        actor: &Actor,
        dir: &Path,
    ) -> Result<Vec<(String, String, i32, Saved)>, WorkflowError> {
        // Every new version passes its budget check before any is stored (a half-synced folder is worse than
        // none).
        let mut checked = Vec::new();
        let mut errors = Vec::new();
        for (source, workflow) in load_dir(dir)? {
            match self.check_if_new(&source, workflow).await {
                Ok(workflow) => checked.push((source, workflow)),
                Err(WorkflowError::Invalid(problems)) => errors.extend(problems),
                Err(other) => return Err(other),
            }
        }
        if !errors.is_empty() {
            return Err(WorkflowError::Invalid(errors));
        }
        let mut outcomes = Vec::new();
        for (source, workflow) in checked {
            let saved = self.store(actor, &workflow, &source).await?;
            outcomes.push((source, workflow.name, workflow.version, saved));
        }
        Ok(outcomes)
    }

    /// Runs [`definition::check_budgets`] on a version this catalog does not hold yet, on a blocking thread;
    /// a stored version (an unchanged re-save, the sync at every start) costs one lookup and no dry run, and an
    /// old version refused by a check it predates still loads.
    async fn check_if_new(
        &self,
        source: &str,
        workflow: Workflow,
    ) -> Result<Workflow, WorkflowError> {
        let stored: bool = sqlx::query_scalar(sql::WORKFLOW_VERSION_EXISTS)
            .bind(&workflow.name)
            .bind(workflow.version)
            .fetch_one(&self.pool)
            .await?;
        if stored {
            return Ok(workflow);
        }
        let source = source.to_string();
        tokio::task::spawn_blocking(move || {
            definition::check_budgets(&source, &workflow).map(|()| workflow)
        })
        .await
        .map_err(|e| WorkflowError::Io(format!("the definition check stopped: {e}")))?
        .map_err(WorkflowError::Invalid)
    }
}

async fn save_statement(
    tx: &mut sqlx::PgConnection,
    workflow: &Workflow,
    source: &str,
) -> Result<SaveRow, sqlx::Error> {
    sqlx::query_as(sql::SAVE_WORKFLOW)
        .bind(&workflow.name)
        .bind(workflow.version)
        .bind(&workflow.definition)
        .bind(source)
        .fetch_one(tx)
        .await
}

/// Validates every definition in `dir` without storing anything; returns (file, name, version) of each.
pub fn check_dir(dir: &Path) -> Result<Vec<(String, String, i32)>, WorkflowError> {
    Ok(check_dir_compiled(dir)?
        .into_iter()
        .map(|(source, w)| (source, w.name, w.version))
        .collect())
}

/// [`check_dir`], answering the compiled definitions.
pub fn check_dir_compiled(dir: &Path) -> Result<Vec<(String, Workflow)>, WorkflowError> {
    let loaded = load_dir(dir)?;
    let mut errors = Vec::new();
    for (source, workflow) in &loaded {
        if let Err(problems) = definition::check_budgets(source, workflow) {
            errors.extend(problems);
        }
    }
    if !errors.is_empty() {
        return Err(WorkflowError::Invalid(errors));
    }
    Ok(loaded)
}

/// Reads, parses and compiles every definition in `dir`, or returns every problem in every file (including
/// one (name, version) defined by two files).
fn load_dir(dir: &Path) -> Result<Vec<(String, Workflow)>, WorkflowError> {
    let mut errors = Vec::new();
    let mut loaded: Vec<(String, Workflow)> = Vec::new();
    for (source, definition) in read_definitions(dir)? {
        match definition::compile(&source, &definition) {
            Ok(workflow) => {
                let twin = loaded
                    .iter()
                    .find(|(_, w)| w.name == workflow.name && w.version == workflow.version);
                if let Some((other, _)) = twin {
                    errors.push(DefinitionError {
                        source: source.clone(),
                        node: None,
                        message: format!(
                            "{} v{} is also defined in {other}",
                            workflow.name, workflow.version
                        ),
                    });
                }
                loaded.push((source, workflow));
            }
            Err(mut problems) => errors.append(&mut problems),
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(WorkflowError::Invalid(errors))
    }
}

/// Reads and parses the definition files of a folder, sorted by name.
fn read_definitions(dir: &Path) -> Result<Vec<(String, serde_json::Value)>, WorkflowError> {
    let read_error = |e: std::io::Error| WorkflowError::Io(format!("{}: {e}", dir.display()));
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
    let mut errors: Vec<DefinitionError> = Vec::new();
    for path in paths {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| WorkflowError::Io(format!("{source}: {e}")))?;
        match definition::parse_text(&source, &text) {
            Ok(value) => files.push((source, value)),
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(WorkflowError::Invalid(errors))
    }
}
