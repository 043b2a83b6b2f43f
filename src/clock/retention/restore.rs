//! `herald archive restore`: one archived day of one data set loaded back for inspection.
//!
//! By default into a scratch table of its own, `herald_restored_<dataset>_<yyyymmdd>` (`part`, `line`, `row
//! jsonb`), created if missing: it never touches a live table, and restoring the same day twice adds nothing
//! (rows are keyed by part and line). With `--into TABLE`, into an existing table whose columns match the
//! archived rows' fields (`CREATE TABLE t (LIKE herald_job_history)`, or the data set's own table): rows are
//! rebuilt with `jsonb_populate_recordset`, fields the table lacks are ignored (a run's `steps`, `waits` and
//! `deliveries`), and the whole day goes in one transaction, so a conflict (a key already there) adds nothing.
//!
//! Every object is checked against its manifest (size, SHA-256, row count) before any row is loaded, and an
//! object larger than [`MAX_RESTORE_BYTES`] is refused.

use chrono::NaiveDate;
use serde::Serialize;
use sqlx::PgPool;

use super::archive::ArchiveTarget;
use crate::clock::ClockError;

/// The largest compressed object restore loads (a day can be restored a part at a time by the manifests it
/// lists).
pub const MAX_RESTORE_BYTES: u64 = 1 << 30;
/// Rows per insert statement.
const ROWS_PER_INSERT: usize = 1_000;

/// What a restore loaded.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub table: String,
    pub parts: usize,
    pub rows: u64,
}

/// Loads `dataset`'s archived `day` into `into` (an existing table) or into its scratch table.
pub async fn restore(
    pool: &PgPool,
    target: &ArchiveTarget,
    dataset: &str,
    day: NaiveDate,
    into: Option<&str>,
) -> Result<Restored, ClockError> {
    super::data_set(dataset)?;
    let manifests = target.day_manifests(dataset, day).await?;
    if manifests.is_empty() {
        return Err(ClockError::Invalid(format!(
            "no archive of {dataset} for {day} in {target:?}"
        )));
    }
    for manifest in &manifests {
        if manifest.bytes > MAX_RESTORE_BYTES {
            return Err(ClockError::Invalid(format!(
                "{} is {} bytes, more than restore loads ({MAX_RESTORE_BYTES})",
                manifest.object, manifest.bytes
            )));
        }
        target.verify_manifest(manifest).await?;
    }
    let table = match into {
        Some(table) => quoted_table(table)?,
        None => format!("herald_restored_{dataset}_{}", day.format("%Y%m%d")),
    };
    let mut tx = pool.begin().await?;
    if into.is_none() {
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (part integer NOT NULL, line bigint NOT NULL, row jsonb NOT NULL, \
             PRIMARY KEY (part, line))"
        ))
        .execute(&mut *tx)
        .await?;
    }
    let mut rows = 0u64;
    for manifest in &manifests {
        let mut reader = target.lines(&manifest.object).await?;
        let mut line_number = 0i64;
        while let Some(lines) = reader.next_batch().await? {
            for chunk in lines.chunks(ROWS_PER_INSERT) {
                if into.is_some() {
                    let array = format!("[{}]", chunk.join(","));
                    sqlx::query(&format!(
                        "INSERT INTO {table} SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb)"
                    ))
                    .bind(array)
                    .execute(&mut *tx)
                    .await?;
                } else {
                    let numbers: Vec<i64> = (line_number..).take(chunk.len()).collect();
                    sqlx::query(&format!(
                        "INSERT INTO {table} (part, line, row) SELECT $1, l, r::jsonb \
                         FROM unnest($2::int8[], $3::text[]) AS t(l, r) ON CONFLICT DO NOTHING"
                    ))
                    .bind(i32::try_from(manifest.part).unwrap_or(i32::MAX))
                    .bind(numbers)
                    .bind(chunk)
                    .execute(&mut *tx)
                    .await?;
                }
                line_number += chunk.len() as i64;
                rows += chunk.len() as u64;
            }
        }
        if u64::try_from(line_number).ok() != Some(manifest.rows) {
            return Err(ClockError::Archive(format!(
                "{} held {line_number} lines, its manifest says {}",
                manifest.object, manifest.rows
            )));
        }
    }
    tx.commit().await?;
    Ok(Restored {
        table,
        parts: manifests.len(),
        rows,
    })
}

/// `name` or `schema.name`, each a plain lower-case identifier, quoted.
fn quoted_table(name: &str) -> Result<String, ClockError> {
    let parts: Vec<&str> = name.split('.').collect();
    let plain = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    if parts.len() > 2 || !parts.iter().all(|p| plain(p)) {
        return Err(ClockError::Invalid(format!(
            "--into {name:?}: give a table as name or schema.name (lower-case letters, digits, '_')"
        )));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_plain_table_names_are_accepted() {
        assert_eq!(
            super::quoted_table("history_copy").unwrap(),
            "\"history_copy\""
        );
        assert_eq!(super::quoted_table("s.t").unwrap(), "\"s\".\"t\"");
        assert!(super::quoted_table("t; DROP TABLE x").is_err());
        assert!(super::quoted_table("a.b.c").is_err());
        assert!(super::quoted_table("").is_err());
    }
}
