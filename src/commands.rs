//! The operating commands of the `herald` binary (keys, jobs, dead letters, queues, workflows, the bridge's dead
//! letters): their arguments and what each does, through the library's public API.

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use sqlx::PgPool;

use herald::app::App;
use herald::audit::Actor;
use herald::config::Settings;
use herald::db;
use herald::queue::dead_letters::{self, DeadLetterFilter};
use herald::queue::{self, IdempotencyKey, JobKind, NewJob, Priority, QueueName, admin};
use herald::workflow::Started;

/// The database of a command: `DATABASE_URL`, or the private cluster `herald up` runs in this directory.
pub async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    let url = db::database_url(&settings.database, &settings.embedded_postgres.dir)?;
    Ok(db::connect(&url, &settings.database).await?)
}

#[derive(Args)]
pub struct EnqueueArgs {
    #[arg(long, default_value = "default")]
    queue: String,
    /// The job kind (which handler runs it).
    #[arg(long, default_value = "herald.log")]
    kind: String,
    /// JSON payload.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// 0-9, higher runs first.
    #[arg(long, default_value_t = 0)]
    priority: i64,
    /// Run at this time (RFC 3339), instead of now.
    #[arg(long, conflicts_with = "delay")]
    run_at: Option<DateTime<Utc>>,
    /// Run after this long (e.g. 30s, 5m, 2h).
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    #[arg(long)]
    max_attempts: Option<i32>,
    /// Handler timeout (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Subcommand)]
pub enum JobsCommand {
    /// Show a job (waiting, running or finished) as JSON.
    Show { id: i64 },
    /// Cancel a job that has not started.
    Cancel { id: i64 },
}

#[derive(Args, Default)]
pub struct DlqFilterArgs {
    #[arg(long)]
    queue: Option<String>,
    #[arg(long)]
    kind: Option<String>,
    /// Only dead letters that failed within this long (e.g. 1h).
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// Only dead letters older than this (e.g. 30d).
    #[arg(long, value_parser = parse_duration)]
    older_than: Option<Duration>,
}

#[derive(Subcommand)]
pub enum BridgeDlqCommand {
    /// List dead-lettered messages, oldest first (not yet replayed, unless --all).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Route one dead-lettered message again (by id), or every one not yet replayed (--all), through the
    /// current routes.
    Replay {
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// With --all: at most this many.
        #[arg(long, default_value_t = 10_000)]
        limit: i64,
    },
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List dead letters, newest first.
    List {
        #[command(flatten)]
        filter: DlqFilterArgs,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Page cursor: the last id of the previous page.
        #[arg(long)]
        before_id: Option<i64>,
    },
    /// Show one dead letter with every attempt's error.
    Show { id: i64 },
    /// Re-enqueue one dead letter (by id) or all matching ones (--all with filters), attempts reset.
    Replay {
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[command(flatten)]
        filter: DlqFilterArgs,
    },
    /// Delete one dead letter (by id) or all matching ones (--all with filters).
    Purge {
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[command(flatten)]
        filter: DlqFilterArgs,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once and stored only as a digest.
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated: enqueue, read, admin.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// List keys (names, prefixes, scopes; never the keys).
    List,
    /// Revoke a key by id (API servers stop accepting it within api.key_cache_secs).
    Revoke { id: i64 },
}

#[derive(Subcommand)]
pub enum TemplatesCommand {
    /// Validate every template, layout and partial in a folder (default: templates.dir) and render each template
    /// for every channel and locale with its sample data; check that the workflows (default: workflows.dir) name
    /// templates that exist, with a variant for the action's channel. No database needed; every problem is
    /// printed, with its file.
    Check {
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        #[arg(long)]
        workflows: Option<std::path::PathBuf>,
    },
    /// Validate and store every document in a folder (default: templates.dir); nothing is stored unless all are
    /// valid.
    Sync {
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// List stored templates, layouts and partials (latest version of each).
    List,
    /// Render a stored template's every channel for a locale, with its sample data or `--data`.
    Preview {
        name: String,
        #[arg(long)]
        locale: Option<String>,
        /// The data the template sees (JSON object: `trigger`, `recipient`, ...); default: its `sample`.
        #[arg(long)]
        data: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum WorkflowsCommand {
    /// Validate every definition in a folder (default: workflows.dir) and store them; nothing is stored unless
    /// all are valid. Prints each problem with its file and node.
    Sync {
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Validate the definitions in a folder without storing anything (no database needed).
    Check {
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// List stored workflows (latest version of each).
    List,
    /// Start a run of a workflow's latest version.
    Trigger {
        name: String,
        /// Trigger data (JSON object).
        #[arg(long, default_value = "{}")]
        data: String,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Start the run for this recipient (its actions address their profile).
        #[arg(long, conflicts_with = "topic")]
        recipient: Option<String>,
        /// Start one run per member of this topic (prints the fan-out's id; `herald workflows fanout ID`).
        #[arg(long)]
        topic: Option<String>,
    },
    /// Show a run and its timeline as JSON.
    Run { id: i64 },
    /// Show a topic fan-out's progress as JSON.
    Fanout { id: i64 },
}

#[derive(Subcommand)]
pub enum RecipientsCommand {
    /// Create or replace a profile from a JSON document (as `PUT /v1/recipients/{id}`).
    Put {
        id: String,
        /// The profile (JSON object): email, phone, locale, timezone, devices, chat, data.
        #[arg(long)]
        profile: String,
    },
    /// Change some fields (a JSON merge patch, as `PATCH /v1/recipients/{id}`).
    Patch {
        id: String,
        #[arg(long)]
        patch: String,
    },
    /// Show a profile with its devices and preferences.
    Get { id: String },
    /// Find profiles by email or phone, or list them in id order.
    List {
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        phone: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// The last id of the previous page.
        #[arg(long)]
        after: Option<String>,
    },
    /// Erase a recipient: the profile now, their history scrubbed by a job (audited).
    Erase { id: String },
    /// Show, or with --set replace, a recipient's preferences (JSON).
    Preferences {
        id: String,
        #[arg(long)]
        set: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum TopicsCommand {
    /// Add recipients (ids, which must have profiles) to a topic.
    Add { topic: String, ids: Vec<String> },
    /// Remove recipients from a topic.
    Remove { topic: String, ids: Vec<String> },
    /// List a topic's member ids (in id order).
    Members {
        topic: String,
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        #[arg(long)]
        after: Option<String>,
    },
}

pub async fn recipients(settings: &Settings, command: RecipientsCommand) -> anyhow::Result<()> {
    use herald::recipients::{Preferences, Profile, RecipientId, store};
    let pool = connect(settings).await?;
    db::migrate(&pool).await?;
    let actor = Actor::cli();
    let parse_json = |text: &str, what: &str| -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(text).with_context(|| format!("{what} is not valid JSON"))
    };
    let invalid = |problems: Vec<(String, String)>| {
        let lines: Vec<String> = problems.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        anyhow::anyhow!("invalid: {}", lines.join("; "))
    };
    let id_of = |id: &str| RecipientId::parse(id).map_err(|e| anyhow::anyhow!("id {e}"));
    match command {
        RecipientsCommand::Put { id, profile } => {
            let id = id_of(&id)?;
            let profile =
                Profile::parse(&parse_json(&profile, "--profile")?, false).map_err(invalid)?;
            store::put(&pool, &actor, id.as_str(), &profile).await?;
            print_json(&store::get(&pool, id.as_str()).await?)
        }
        RecipientsCommand::Patch { id, patch } => {
            let id = id_of(&id)?;
            let patch = parse_json(&patch, "--patch")?;
            print_json(&store::patch(&pool, &actor, id.as_str(), &patch).await?)
        }
        RecipientsCommand::Get { id } => match store::get(&pool, &id).await? {
            Some(recipient) => print_json(&recipient),
            None => bail!("no recipient has the id `{id}`"),
        },
        RecipientsCommand::List {
            email,
            phone,
            limit,
            after,
        } => {
            let filter = store::ListFilter {
                after: after.as_deref(),
                email: email.as_deref(),
                phone: phone.as_deref(),
                limit: limit.clamp(1, 10_000),
            };
            print_json(&store::list(&pool, &filter).await?)
        }
        RecipientsCommand::Erase { id } => {
            let engine = App::on_pool(settings.clone(), pool)?.engine;
            let erasure = engine.erase_recipient(&actor, &id).await?;
            print_json(&serde_json::json!({ "erasure": erasure }))
        }
        RecipientsCommand::Preferences { id, set } => {
            if let Some(set) = set {
                let preferences: Preferences = serde_json::from_value(parse_json(&set, "--set")?)
                    .context("--set is not a preferences document")?;
                store::set_preferences(&pool, &actor, &id, &preferences).await?;
            }
            match store::preferences(&pool, &id).await? {
                Some(preferences) => print_json(&preferences),
                None => bail!("no recipient has the id `{id}`"),
            }
        }
    }
}

pub async fn topics(settings: &Settings, command: TopicsCommand) -> anyhow::Result<()> {
    use herald::recipients::store;
    let pool = connect(settings).await?;
    db::migrate(&pool).await?;
    let check = |topic: &str| {
        if store::valid_topic(topic) {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "a topic key is 1-128 characters of [A-Za-z0-9_.:-]"
            ))
        }
    };
    match command {
        TopicsCommand::Add { topic, ids } => {
            check(&topic)?;
            let added = store::add_members(&pool, &Actor::cli(), &topic, &ids).await?;
            print_json(&serde_json::json!({ "changed": added }))
        }
        TopicsCommand::Remove { topic, ids } => {
            check(&topic)?;
            let removed = store::remove_members(&pool, &Actor::cli(), &topic, &ids).await?;
            print_json(&serde_json::json!({ "changed": removed }))
        }
        TopicsCommand::Members {
            topic,
            limit,
            after,
        } => {
            check(&topic)?;
            let limit = limit.clamp(1, 100_000);
            print_json(&store::members(&pool, &topic, after.as_deref(), None, limit).await?)
        }
    }
}

#[derive(Subcommand)]
pub enum QueuesCommand {
    /// Depth, running, scheduled and paused state of every queue.
    List,
    /// Stop the whole fleet from claiming this queue's jobs (running ones finish).
    Pause { name: String },
    /// Let the fleet claim this queue's jobs again.
    Resume { name: String },
}

pub async fn bridge_dlq(settings: &Settings, command: BridgeDlqCommand) -> anyhow::Result<()> {
    use herald::bridge::dead_letters::{self as bridge_dlq, DeadLetterQuery};
    let pool = connect(settings).await?;
    match command {
        BridgeDlqCommand::List { all, limit } => {
            let query = DeadLetterQuery {
                include_replayed: all,
                id: None,
                group_id: None,
                limit,
            };
            print_json(&bridge_dlq::list(&pool, &query).await?)
        }
        BridgeDlqCommand::Replay { id, all, limit } => {
            if id.is_none() && !all {
                bail!("give a dead letter id, or --all to replay every one not yet replayed");
            }
            let writer = App::on_pool(settings.clone(), pool)?.bridge_writer()?;
            let query = DeadLetterQuery {
                include_replayed: false,
                id,
                group_id: None,
                limit: if id.is_some() { 1 } else { limit },
            };
            let results = bridge_dlq::replay(&writer, &Actor::cli(), &query).await?;
            let replayed = results.iter().filter(|r| r.replayed).count();
            print_json(&serde_json::json!({ "replayed": replayed, "results": results }))
        }
    }
}

pub async fn templates(settings: &Settings, command: TemplatesCommand) -> anyhow::Result<()> {
    use herald::templates::catalog;
    if let TemplatesCommand::Check { dir, workflows } = &command {
        let dir = dir
            .clone()
            .unwrap_or_else(|| settings.templates.dir.clone());
        let (documents, mut problems) = catalog::check_dir_all(&dir)?;
        let workflows = workflows
            .clone()
            .unwrap_or_else(|| settings.workflows.dir.clone());
        if workflows.is_dir() {
            let compiled = match herald::workflow::catalog::check_dir_compiled(&workflows) {
                Ok(compiled) => compiled,
                Err(herald::workflow::WorkflowError::Invalid(found)) => {
                    problems.extend(found.iter().map(ToString::to_string));
                    Vec::new()
                }
                Err(other) => return Err(other.into()),
            };
            for (file, workflow) in &compiled {
                for (node, name, channel) in herald::workflow::definition::template_uses(workflow) {
                    let found = documents.iter().find(|(_, d)| d.name == name);
                    match found {
                        None => problems.push(format!(
                            "{file}: node {node}: template `{name}` is not in {}",
                            dir.display()
                        )),
                        Some((_, d)) if !d.channels.contains_key(channel.as_str()) => {
                            problems.push(format!(
                                "{file}: node {node}: template `{name}` has no `{}` variant",
                                channel.as_str()
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(report_invalid_templates(
                herald::templates::TemplatesError::Invalid(problems),
            ));
        }
        for (file, document) in documents {
            println!(
                "{file}: {} {} v{} is valid",
                document.kind.as_str(),
                document.name,
                document.version
            );
        }
        return Ok(());
    }
    let pool = connect(settings).await?;
    db::migrate(&pool).await?;
    let templates = herald::templates::Catalogue::new(pool);
    match command {
        TemplatesCommand::Check { .. } => Ok(()),
        TemplatesCommand::Sync { dir } => {
            let dir = dir.unwrap_or_else(|| settings.templates.dir.clone());
            let outcomes = templates
                .sync_dir(&Actor::cli(), &dir)
                .await
                .map_err(report_invalid_templates)?;
            for (file, name, version, saved) in outcomes {
                println!("{file}: {name} v{version} {saved:?}");
            }
            Ok(())
        }
        TemplatesCommand::List => print_json(&templates.list().await?),
        TemplatesCommand::Preview { name, locale, data } => {
            let data = data
                .map(|text| serde_json::from_str::<serde_json::Value>(&text))
                .transpose()?;
            let preview = templates.preview(&name, locale.as_deref(), data).await?;
            print_json(&preview)
        }
    }
}

fn report_invalid_templates(error: herald::templates::TemplatesError) -> anyhow::Error {
    if let herald::templates::TemplatesError::Invalid(problems) = &error {
        for problem in problems {
            eprintln!("{problem}");
        }
        return anyhow::anyhow!("{} problem(s) in templates", problems.len());
    }
    error.into()
}

pub async fn workflows(settings: &Settings, command: WorkflowsCommand) -> anyhow::Result<()> {
    use herald::workflow::catalog;
    if let WorkflowsCommand::Check { dir } = &command {
        let dir = dir
            .clone()
            .unwrap_or_else(|| settings.workflows.dir.clone());
        let checked = catalog::check_dir(&dir).map_err(report_invalid)?;
        for (file, name, version) in checked {
            println!("{file}: {name} v{version} is valid");
        }
        return Ok(());
    }
    let pool = connect(settings).await?;
    db::migrate(&pool).await?;
    let engine = App::on_pool(settings.clone(), pool)?.engine;
    match command {
        WorkflowsCommand::Check { .. } => Ok(()),
        WorkflowsCommand::Sync { dir } => {
            let dir = dir.unwrap_or_else(|| settings.workflows.dir.clone());
            let outcomes = engine
                .catalog
                .sync_dir(&Actor::cli(), &dir)
                .await
                .map_err(report_invalid)?;
            for (file, name, version, saved) in outcomes {
                println!("{file}: {name} v{version} {saved:?}");
            }
            Ok(())
        }
        WorkflowsCommand::List => print_json(&engine.catalog.list().await?),
        WorkflowsCommand::Trigger {
            name,
            data,
            idempotency_key,
            recipient,
            topic,
        } => {
            let data: serde_json::Value =
                serde_json::from_str(&data).context("--data is not valid JSON")?;
            if let Some(topic) = topic {
                let started = engine
                    .start_fanout(&name, &topic, data, idempotency_key, None)
                    .await?;
                let status = match started {
                    herald::workflow::fanout::FanoutStarted::Created(_) => "created",
                    herald::workflow::fanout::FanoutStarted::Existing(_) => "existing",
                };
                return print_json(&serde_json::json!({
                    "fanout": started.id(), "workflow": name, "topic": topic, "status": status,
                }));
            }
            // The same fields as the API's answer to `POST /v1/workflows/{name}/runs`.
            let (id, version, status) = match engine
                .start_run_for(&name, data, idempotency_key, None, recipient)
                .await?
            {
                Started::Created { id, version } => (id, version, "created"),
                Started::Existing { id, version } => (id, version, "existing"),
            };
            print_json(&serde_json::json!({
                "id": id, "workflow": name, "version": version, "status": status,
            }))
        }
        WorkflowsCommand::Run { id } => print_json(&engine.get_run(id).await?),
        WorkflowsCommand::Fanout { id } => print_json(&engine.fanout(id).await?),
    }
}

/// Prints each definition problem on its own line before failing.
fn report_invalid(error: herald::workflow::WorkflowError) -> anyhow::Error {
    if let herald::workflow::WorkflowError::Invalid(problems) = &error {
        for problem in problems {
            eprintln!("{problem}");
        }
        return anyhow::anyhow!("{} problem(s) in workflow definitions", problems.len());
    }
    error.into()
}

pub async fn keys(pool: &PgPool, command: KeysCommand) -> anyhow::Result<()> {
    use herald::api::keys::{self, Scope};
    match command {
        KeysCommand::Create { name, scopes } => {
            let scopes = scopes
                .iter()
                .map(|s| {
                    Scope::parse(s).with_context(|| {
                        format!("unknown scope `{s}` (use enqueue, read, admin, events, metrics)")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (key, record) = keys::create(pool, &Actor::cli(), &name, &scopes).await?;
            println!("{key}");
            eprintln!(
                "created key {} ({}) with scopes {:?}; it is shown only now",
                record.id, record.prefix, record.scopes
            );
            Ok(())
        }
        KeysCommand::List => print_json(&keys::list(pool).await?),
        KeysCommand::Revoke { id } => {
            if !keys::revoke(pool, &Actor::cli(), id).await? {
                bail!("no live key with id {id}");
            }
            println!("key {id} revoked");
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct AuditArgs {
    /// Only this action (e.g. `queue.pause`, `key.revoke`, `dead_letter.replay`).
    #[arg(long)]
    action: Option<String>,
    /// Only actions by this API key id.
    #[arg(long)]
    key_id: Option<i64>,
    /// Only actions in this past duration (`30m`, `7d`).
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// How many rows, newest first.
    #[arg(long, default_value_t = 50)]
    limit: i64,
    /// Only rows older than this id (the last id of the previous page).
    #[arg(long)]
    before_id: Option<i64>,
}

pub async fn audit(pool: &PgPool, args: AuditArgs) -> anyhow::Result<()> {
    if !(1..=10_000).contains(&args.limit) {
        bail!("--limit must be between 1 and 10000");
    }
    let filter = herald::audit::AuditFilter {
        action: args.action,
        actor_key_id: args.key_id,
        since: args.since.map(|d| Utc::now() - d),
        before_id: args.before_id,
    };
    print_json(&herald::audit::list(pool, &filter, args.limit).await?)
}

pub async fn enqueue(settings: &Settings, pool: &PgPool, args: EnqueueArgs) -> anyhow::Result<()> {
    let payload: serde_json::Value =
        serde_json::from_str(&args.payload).context("--payload is not valid JSON")?;
    let mut job = NewJob::new(
        QueueName::parse(&args.queue)?,
        JobKind::parse(&args.kind)?,
        payload,
    )
    .priority(Priority::new(args.priority)?);
    if let Some(at) = args.run_at.or_else(|| args.delay.map(|d| Utc::now() + d)) {
        job = job.run_at(at);
    }
    if let Some(attempts) = args.max_attempts {
        if attempts < 1 {
            bail!("--max-attempts must be at least 1");
        }
        job = job.max_attempts(attempts);
    }
    if let Some(timeout) = args.timeout {
        job = job.timeout(timeout);
    }
    if let Some(key) = args.idempotency_key {
        job = job.idempotency_key(IdempotencyKey::parse(&key)?);
    }
    let mut conn = pool.acquire().await?;
    let result = queue::enqueue(&mut conn, &settings.jobs.defaults(), job).await?;
    print_json(&result)
}

pub async fn jobs(pool: &PgPool, command: JobsCommand) -> anyhow::Result<()> {
    match command {
        JobsCommand::Show { id } => match admin::find_job(pool, id).await? {
            Some(job) => print_json(&job),
            None => bail!("job {id} not found"),
        },
        JobsCommand::Cancel { id } => {
            admin::cancel_job(pool, &Actor::cli(), id).await?;
            println!("job {id} cancelled");
            Ok(())
        }
    }
}

pub async fn dlq(settings: &Settings, pool: &PgPool, command: DlqCommand) -> anyhow::Result<()> {
    let aging = settings.jobs.priority_aging;
    match command {
        DlqCommand::List {
            filter,
            limit,
            before_id,
        } => print_json(
            &dead_letters::list(pool, &filter.into_filter(None), before_id, limit).await?,
        ),
        DlqCommand::Show { id } => match dead_letters::get(pool, id).await? {
            Some(letter) => print_json(&letter),
            None => bail!("dead letter {id} not found"),
        },
        DlqCommand::Replay { id, all, filter } => {
            let filter = selection(id, all, filter)?;
            let replayed = dead_letters::replay(pool, &Actor::cli(), &filter, aging).await?;
            print_json(&serde_json::json!({ "replayed": replayed.len(), "jobs": replayed }))
        }
        DlqCommand::Purge { id, all, filter } => {
            let selected = selection(id, all, filter)?;
            let purged = dead_letters::purge(pool, &Actor::cli(), &selected).await?;
            print_json(&serde_json::json!({ "purged": purged }))
        }
    }
}

/// Replay and purge act on one id, or on everything matching with an explicit `--all`.
fn selection(
    id: Option<i64>,
    all: bool,
    filter: DlqFilterArgs,
) -> anyhow::Result<DeadLetterFilter> {
    match (id, all) {
        (Some(id), _) => Ok(DeadLetterFilter::by_id(id)),
        (None, true) => Ok(filter.into_filter(None)),
        (None, false) => {
            bail!("name a dead letter id, or pass --all (with --queue/--kind/--since/--older-than)")
        }
    }
}

impl DlqFilterArgs {
    fn into_filter(self, id: Option<i64>) -> DeadLetterFilter {
        DeadLetterFilter {
            id,
            queue: self.queue,
            kind: self.kind,
            failed_since: self.since.map(|d| Utc::now() - d),
            failed_before: self.older_than.map(|d| Utc::now() - d),
        }
    }
}

pub async fn queues(pool: &PgPool, command: QueuesCommand) -> anyhow::Result<()> {
    match command {
        QueuesCommand::List => print_json(&admin::queue_stats(pool).await?),
        QueuesCommand::Pause { name } => {
            admin::set_paused(pool, &Actor::cli(), &QueueName::parse(&name)?, true).await?;
            println!("queue {name} paused");
            Ok(())
        }
        QueuesCommand::Resume { name } => {
            admin::set_paused(pool, &Actor::cli(), &QueueName::parse(&name)?, false).await?;
            println!("queue {name} resumed");
            Ok(())
        }
    }
}

pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `250ms`, `30s`, `5m`, `2h`, `7d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a number followed by ms, s, m, h or d"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

#[derive(Subcommand)]
pub enum CronCommand {
    /// Every schedule: cron, time zone, next tick, last tick and its outcome, paused or not (JSON).
    List,
    /// Pause a schedule fleet-wide: its ticks pass without firing, and do not fire on resume.
    Pause { name: String },
    /// Let a paused schedule fire again from its next tick.
    Resume { name: String },
}

pub async fn cron(settings: &Settings, command: CronCommand) -> anyhow::Result<()> {
    use herald::clock::schedules;
    let pool = connect(settings).await?;
    db::migrate(&pool).await?;
    let app = App::on_pool(settings.clone(), pool)?;
    let all = app.schedules()?;
    match command {
        CronCommand::List => {
            print_json(&schedules::list(&app.pool, &app.engine, &all, chrono::Utc::now()).await?)
        }
        CronCommand::Pause { name } => {
            schedules::set_paused(&app.pool, &Actor::cli(), &all, &name, true).await?;
            println!("schedule {name} paused");
            Ok(())
        }
        CronCommand::Resume { name } => {
            schedules::set_paused(&app.pool, &Actor::cli(), &all, &name, false).await?;
            println!("schedule {name} resumed");
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct RollupDays {
    /// Recompute this day (YYYY-MM-DD, a day in clock.rollups.timezone).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    day: Option<chrono::NaiveDate>,
    /// Recompute the days from this one...
    #[arg(long, requires = "to")]
    from: Option<chrono::NaiveDate>,
    /// ...to this one, inclusive (at most 366 days).
    #[arg(long, requires = "from")]
    to: Option<chrono::NaiveDate>,
}

#[derive(Subcommand)]
pub enum RollupCommand {
    /// The stored rollups of a range of days, as JSON (what GET /v1/analytics/daily answers).
    Show {
        /// The first day (YYYY-MM-DD).
        #[arg(long)]
        from: chrono::NaiveDate,
        /// Inclusive, at most 366 days after --from (default: --from).
        #[arg(long)]
        to: Option<chrono::NaiveDate>,
        /// Only this workflow (runs, steps, deliveries; jobs are left out).
        #[arg(long)]
        workflow: Option<String>,
        /// Only this channel (deliveries only).
        #[arg(long)]
        channel: Option<String>,
        /// Only this provider (deliveries only).
        #[arg(long)]
        provider: Option<String>,
    },
}

/// `herald rollup --day D | --from D --to D` recomputes days from the raw rows; `herald rollup show` reads them.
pub async fn rollup(
    settings: &Settings,
    days: RollupDays,
    command: Option<RollupCommand>,
) -> anyhow::Result<()> {
    use herald::clock::rollups::{self, RollupFilter};
    let pool = connect(settings).await?;
    db::migrate(&pool).await?;
    let rollup_settings = &settings.clock.rollups;
    match (command, days) {
        (
            Some(RollupCommand::Show {
                from,
                to,
                workflow,
                channel,
                provider,
            }),
            _,
        ) => {
            let filter = RollupFilter::new(from, to.unwrap_or(from), workflow, channel, provider)?;
            print_json(&rollups::show(&pool, &filter).await?)
        }
        (None, RollupDays { day: Some(day), .. }) => {
            print_json(&rollups::rebuild_range(&pool, rollup_settings, day, day).await?)
        }
        (
            None,
            RollupDays {
                from: Some(from),
                to: Some(to),
                ..
            },
        ) => print_json(&rollups::rebuild_range(&pool, rollup_settings, from, to).await?),
        (None, _) => bail!("say which days: --day D, or --from D --to D (or `herald rollup show`)"),
    }
}

#[derive(Args)]
pub struct RetentionRunArgs {
    /// The pass's "now" (RFC 3339): rows older than now minus each data set's age are archived and removed.
    #[arg(long)]
    now: Option<DateTime<Utc>>,
}

/// `herald retention run`: one pass, as the `herald.retention` job does it.
pub async fn retention_run(settings: &Settings, args: RetentionRunArgs) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    db::migrate(&pool).await?;
    let now = args.now.unwrap_or_else(Utc::now);
    let report = herald::clock::retention::run(&pool, &settings.clock.retention, now).await?;
    print_json(&report)?;
    let errors = report.errors();
    if !errors.is_empty() {
        bail!("retention failed for {}", errors.join("; "));
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum ArchiveCommand {
    /// The archived objects (their manifests), by data set, day and part (JSON).
    List {
        /// Only this data set (job_history, dead_letters, runs, events, callback_events, bridge_dead_letters).
        #[arg(long)]
        dataset: Option<String>,
    },
    /// Load one archived day back, after checking each object's checksum and row count: into a scratch table
    /// `herald_restored_<dataset>_<yyyymmdd>` (part, line, row jsonb), or with --into into an existing table
    /// whose columns match the rows (e.g. `CREATE TABLE t (LIKE herald_job_history)`).
    Restore {
        #[arg(long)]
        dataset: String,
        /// The UTC day, YYYY-MM-DD.
        #[arg(long)]
        day: chrono::NaiveDate,
        #[arg(long)]
        into: Option<String>,
    },
}

pub async fn archive(settings: &Settings, command: ArchiveCommand) -> anyhow::Result<()> {
    use herald::clock::retention::{self, ArchiveTarget};
    let target = ArchiveTarget::from_settings(&settings.clock.retention.archive)?;
    match command {
        ArchiveCommand::List { dataset } => {
            if let Some(name) = &dataset {
                retention::data_set(name)?;
            }
            print_json(&target.manifests(dataset.as_deref()).await?)
        }
        ArchiveCommand::Restore { dataset, day, into } => {
            let pool = connect(settings).await?;
            let restored =
                retention::restore(&pool, &target, &dataset, day, into.as_deref()).await?;
            print_json(&restored)
        }
    }
}

/// `herald status`: the fleet on one screen.
#[derive(Args)]
pub struct StatusArgs {
    /// Redraw every this many seconds until interrupted.
    #[arg(long, value_name = "SECS")]
    pub watch: Option<u64>,
    /// One JSON object instead of the text screen.
    #[arg(long)]
    pub json: bool,
}

pub async fn status(settings: &Settings, args: StatusArgs) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    loop {
        // A table locked elsewhere must not hang the screen: each refresh gives up after 15 s.
        let status = tokio::time::timeout(Duration::from_secs(15), herald::status::read(&pool))
            .await
            .map_err(|_| anyhow::anyhow!("the database did not answer in 15 s"))??;
        if args.json {
            println!("{}", serde_json::to_string(&status)?);
        } else {
            if args.watch.is_some() {
                // Clear the screen and go home, as `watch` does.
                print!("\x1b[2J\x1b[H");
            }
            print_status(&status);
        }
        let Some(every) = args.watch else {
            return Ok(());
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(every.max(1))) => {}
        }
    }
}

fn print_status(status: &herald::status::FleetStatus) {
    let ago = |at: DateTime<Utc>| {
        let secs = (status.at - at).num_milliseconds() as f64 / 1000.0;
        format!("{secs:.1}s ago")
    };
    println!(
        "herald status at {}",
        status.at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    println!("\nWORKERS ({})", status.workers.len());
    println!(
        "  {:<24} {:>8} {:>9} {:>11} {:>14}  queues",
        "host", "pid", "in flight", "concurrency", "heartbeat"
    );
    for (worker, held) in &status.workers {
        println!(
            "  {:<24} {:>8} {:>9} {:>11} {:>14}  {}",
            worker.hostname,
            worker.pid,
            held,
            worker.concurrency,
            ago(worker.heartbeat_at),
            worker.queues.join(",")
        );
    }
    println!("\nQUEUES");
    println!(
        "  {:<24} {:>10} {:>10} {:>10} {:>12} {:>10} {:>7}",
        "queue", "available", "scheduled", "running", "oldest due", "done/min", "paused"
    );
    for (queue, per_minute) in &status.queues {
        let oldest = queue
            .oldest_age_secs
            .map_or_else(|| "-".to_string(), |secs| format!("{secs:.1}s"));
        println!(
            "  {:<24} {:>10} {:>10} {:>10} {:>12} {:>10} {:>7}",
            queue.name,
            queue.available,
            queue.scheduled,
            queue.running,
            oldest,
            per_minute,
            queue.paused
        );
    }
    match &status.stats_leader {
        Some((by, age)) => println!("  (queue depth metrics counted by {by}, {age:.1}s ago)"),
        None => println!("  (queue depth metrics: no process has counted yet)"),
    }
    println!("\nPROVIDERS (circuits per worker)");
    if status.circuits.is_empty() {
        println!("  none recorded");
    }
    for circuit in &status.circuits {
        println!(
            "  {:<12} {:<10} failures {:>3}  {}  {}",
            circuit.provider,
            circuit.state.as_str(),
            circuit.consecutive_failures,
            ago(circuit.updated_at),
            circuit.last_error.as_deref().unwrap_or("")
        );
    }
    println!("\nBRIDGE (stored offsets)");
    if status.bridge.is_empty() {
        println!("  no consumer group has stored an offset");
    }
    for offset in &status.bridge {
        println!(
            "  {:<16} {:<24} partition {:>3}  next offset {:>12}  moved {:.1}s ago",
            offset.group_id,
            offset.topic,
            offset.partition,
            offset
                .next_offset
                .map_or_else(|| "-".into(), |o| o.to_string()),
            offset.idle_secs
        );
    }
    println!("\nALERTS");
    if status.alerts.is_empty() {
        println!("  none");
    }
    for alert in &status.alerts {
        let when = match alert.state.as_str() {
            "resolved" => alert.resolved_at.map(ago),
            "firing" => alert.fired_at.map(ago),
            _ => Some(ago(alert.since)),
        };
        println!(
            "  {:<9} {:<14} {:<20} {}  {}",
            alert.state.to_uppercase(),
            alert.rule,
            alert.subject,
            when.unwrap_or_default(),
            alert.summary
        );
    }
    println!("\nCLOCK (schedules)");
    for tick in &status.schedules {
        println!(
            "  {:<28} last tick {}  fired {}{}{}",
            tick.name,
            tick.last_tick.format("%Y-%m-%d %H:%M:%S"),
            tick.last_fired_at.map_or_else(|| "never".into(), ago),
            if tick.paused { "  PAUSED" } else { "" },
            tick.last_error
                .as_deref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
}
