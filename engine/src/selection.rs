//! The selection at start-up against the one the state records: tables added, removed, or
//! with changed options are handled table by table (deleted, or snapshotted alone while the
//! stream runs), never by a full dump.

use std::sync::Arc;

use etcd_sync_api::{Driver, Position, SourceTable};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::sink::{Phase, Selected, Sink};
use crate::{apply, dump, shape, EngineError, Settings};

/// What the states record of this selection: the tables, their options' fingerprints; an
/// option naming a table not selected, or a column a table lacks, is refused here, before
/// anything is written.
pub(crate) fn selection_record<T: SourceTable>(
    tables: &[T],
    settings: &Settings,
) -> Result<Selected, EngineError> {
    let schemas: Vec<Arc<etcd_sync_api::TableSchema>> =
        tables.iter().map(|t| Arc::clone(t.schema())).collect();
    let mut problems = settings.options.unknown_tables(&schemas);
    let mut options = std::collections::BTreeMap::new();
    for schema in &schemas {
        let table_options = settings.options.for_table(&schema.id);
        if let Err(e) = shape::RowShape::new(schema, table_options, true) {
            problems.push(e.to_string());
        }
        let fingerprint = table_options
            .map(shape::TableOptions::fingerprint)
            .unwrap_or_default();
        if !fingerprint.is_empty() {
            options.insert(schema.id.to_string(), fingerprint);
        }
    }
    if !problems.is_empty() {
        return Err(EngineError::Options(problems));
    }
    let mut names: Vec<String> = schemas.iter().map(|t| t.id.to_string()).collect();
    names.sort();
    Ok(Selected {
        tables: names,
        options,
        snapshotting: Vec::new(),
    })
}

/// How the selection differs from the one the state records.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct SelectionChanges {
    added: Vec<String>,
    removed: Vec<String>,
    /// Selected before and now, with other options.
    options_changed: Vec<String>,
    /// Still selected, whose own snapshot a crash interrupted.
    unfinished: Vec<String>,
}

impl SelectionChanges {
    pub(crate) fn between(stored: &Selected, now: &Selected) -> Self {
        let fingerprint = |s: &Selected, t: &str| s.options.get(t).cloned().unwrap_or_default();
        Self {
            added: now
                .tables
                .iter()
                .filter(|t| !stored.tables.contains(t))
                .cloned()
                .collect(),
            removed: stored
                .tables
                .iter()
                .filter(|t| !now.tables.contains(t))
                .cloned()
                .collect(),
            options_changed: now
                .tables
                .iter()
                .filter(|t| stored.tables.contains(t) && !stored.snapshotting.contains(t))
                .filter(|t| fingerprint(stored, t) != fingerprint(now, t))
                .cloned()
                .collect(),
            unfinished: stored
                .snapshotting
                .iter()
                .filter(|t| now.tables.contains(t))
                .cloned()
                .collect(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Tables that need a snapshot of their own.
    fn to_snapshot(&self) -> Vec<&String> {
        self.added
            .iter()
            .chain(&self.options_changed)
            .chain(&self.unfinished)
            .collect()
    }
}

/// Deletes the keys of tables no longer selected (or leaves them, `on_remove: keep`).
async fn remove_tables<S: Sink>(
    store: &S,
    removed: &[String],
    settings: &Settings,
) -> Result<(), EngineError> {
    if removed.is_empty() {
        return Ok(());
    }
    match settings.options.on_remove {
        shape::OnRemove::Delete => {
            let deleted = dump::delete_tables(store, removed, settings).await?;
            info!(tables = ?removed, keys_deleted = deleted, "keys of tables no longer selected deleted (tables.on_remove: delete)");
        }
        shape::OnRemove::Keep => {
            info!(tables = ?removed, "keys of tables no longer selected left in etcd (tables.on_remove: keep)");
        }
    }
    Ok(())
}

/// Before a full dump over an earlier state: the tables that state covered and this selection
/// does not are removed as they would be without the dump.
pub(crate) async fn delete_removed<S: Sink>(
    store: &S,
    stored: &Selected,
    now: &Selected,
    settings: &Settings,
) -> Result<(), EngineError> {
    remove_tables(
        store,
        &SelectionChanges::between(stored, now).removed,
        settings,
    )
    .await
}

/// Brings etcd to the new selection without a full dump: the keys of removed tables are
/// deleted (or kept, `on_remove: keep`); added tables and tables whose options changed are
/// snapshotted alone, while the stream runs (the plan returned), or before it when an earlier
/// such snapshot was interrupted.
pub(crate) async fn apply_selection_changes<D: Driver, S: Sink>(
    driver: &Arc<D>,
    store: &mut S,
    tables: &[D::Table],
    changes: &SelectionChanges,
    position: &Position,
    settings: &Settings,
    cancel: &CancellationToken,
) -> Result<Option<apply::JoinPlan<D::Table>>, EngineError> {
    info!(
        added = ?changes.added,
        removed = ?changes.removed,
        options_changed = ?changes.options_changed,
        unfinished_snapshots = ?changes.unfinished,
        "the table selection changed since the last run; only the tables concerned are written"
    );
    remove_tables(store, &changes.removed, settings).await?;
    let wanted = changes.to_snapshot();
    let joining: Vec<D::Table> = tables
        .iter()
        .filter(|t| wanted.contains(&&t.schema().id.to_string()))
        .cloned()
        .collect();
    if joining.is_empty() {
        let state = store.state(Phase::Sync, Some(position.clone()));
        store.commit(vec![], Some(&state)).await?;
        return Ok(None);
    }
    if !changes.unfinished.is_empty() {
        // A join that a crash (or a change it could not apply) interrupted: the tables are
        // snapshotted before the stream resumes, which needs no row of theirs in etcd.
        dump::snapshot_tables(driver, store, &joining, position, settings, cancel).await?;
        return Ok(None);
    }
    store.update_snapshotting(|snapshotting| {
        *snapshotting = joining.iter().map(|t| t.schema().id.to_string()).collect();
    });
    let state = store.state(Phase::Sync, Some(position.clone()));
    let start_revision = store.commit(vec![], Some(&state)).await?;
    Ok(Some(apply::JoinPlan {
        tables: joining,
        start_revision,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_changes_are_named() {
        let stored = Selected {
            tables: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            options: [("b".to_string(), "x".to_string())].into(),
            snapshotting: vec!["d".into()],
        };
        let now = Selected {
            tables: vec!["b".into(), "c".into(), "d".into(), "e".into()],
            options: [("c".to_string(), "y".to_string())].into(),
            snapshotting: vec![],
        };
        let changes = SelectionChanges::between(&stored, &now);
        assert_eq!(changes.added, vec!["e"]);
        assert_eq!(changes.removed, vec!["a"]);
        assert_eq!(changes.options_changed, vec!["b", "c"]);
        assert_eq!(changes.unfinished, vec!["d"]);
        assert!(SelectionChanges::between(&now, &now).is_empty());
    }
}
