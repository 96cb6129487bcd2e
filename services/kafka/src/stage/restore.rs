//! Restoring one partition's state: its changelog is applied into an entity map as it is read
//! (memory follows live state, not history), then the outputs written after the last checkpoint
//! are read back so the logic can reconcile them and never emit one twice.

use std::collections::HashMap;
use std::time::Instant;

use serde::de::DeserializeOwned;

use super::checkpoint::{Checkpoint, CHECKPOINT_KEY};
use crate::partition_reader::{for_each_record, StoreError, StoredRecord};
use crate::KafkaSettings;

/// What a partition's restore found.
pub struct Restored<E, M> {
    pub partition: i32,
    pub entities: HashMap<String, E>,
    pub checkpoint: Checkpoint,
    /// Outputs written after the checkpoint, oldest first.
    pub emitted: Vec<M>,
    /// Changelog records read.
    pub records: u64,
    /// Where the changelog and each output partition ended when read (what the state reflects).
    pub ends: Vec<i64>,
    pub started: Instant,
}

/// Where a restore reads.
#[derive(Clone)]
pub struct RestoreSource {
    pub kafka: KafkaSettings,
    pub client: String,
    pub state: String,
    pub outputs: Vec<String>,
}

/// The entities and checkpoint a changelog holds, its records applied one by one.
pub struct ChangelogState<E> {
    pub entities: HashMap<String, E>,
    /// The last checkpoint's bytes (`None` when there is none, or it was deleted).
    last_checkpoint: Option<Vec<u8>>,
    undecodable: u64,
}

impl<E: DeserializeOwned> ChangelogState<E> {
    /// Applies one changelog record: a checkpoint, an entity, or a tombstone.
    pub fn apply(&mut self, record: &StoredRecord<'_>) {
        let Some(key) = record.key.and_then(|k| std::str::from_utf8(k).ok()) else {
            return;
        };
        if key == CHECKPOINT_KEY {
            self.last_checkpoint = record.value.map(<[u8]>::to_vec);
            return;
        }
        match record.value {
            None => {
                self.entities.remove(key);
            }
            Some(value) => match serde_json::from_slice::<E>(value) {
                Ok(entity) => {
                    self.entities.insert(key.to_string(), entity);
                }
                Err(_) => self.undecodable += 1,
            },
        }
    }

    /// The last checkpoint; an undecodable one counts as none, so every output is read back.
    pub fn checkpoint(&self, first_output: Option<&str>) -> Checkpoint {
        self.last_checkpoint
            .as_deref()
            .and_then(|value| Checkpoint::decode(value, first_output))
            .unwrap_or_default()
    }
}

impl<E> Default for ChangelogState<E> {
    fn default() -> Self {
        ChangelogState {
            entities: HashMap::new(),
            last_checkpoint: None,
            undecodable: 0,
        }
    }
}

/// Restores `partition` from `source`. Blocking: run it on the blocking pool.
pub fn restore_partition<E: DeserializeOwned, M: DeserializeOwned>(
    source: &RestoreSource,
    partition: i32,
) -> Result<Restored<E, M>, StoreError> {
    let started = Instant::now();
    let mut state = ChangelogState::<E>::default();
    let changelog = for_each_record(
        &source.kafka,
        &source.client,
        &source.state,
        partition,
        None,
        |record| state.apply(&record),
    )?;
    if state.undecodable > 0 {
        tracing::error!(
            partition,
            skipped = state.undecodable,
            "Skipped changelog records that do not decode."
        );
    }
    let checkpoint = state.checkpoint(source.outputs.first().map(String::as_str));
    let mut emitted = Vec::new();
    let mut ends = vec![changelog.end];
    for topic in &source.outputs {
        let from = checkpoint.read_from(topic);
        let read = for_each_record(
            &source.kafka,
            &source.client,
            topic,
            partition,
            from,
            |record| {
                if let Some(output) = record.value.and_then(|v| serde_json::from_slice(v).ok()) {
                    emitted.push(output);
                }
            },
        )?;
        ends.push(read.end);
    }
    Ok(Restored {
        partition,
        entities: state.entities,
        checkpoint,
        emitted,
        records: changelog.records,
        ends,
        started,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(key: &'a str, value: Option<&'a str>) -> StoredRecord<'a> {
        StoredRecord {
            key: Some(key.as_bytes()),
            value: value.map(str::as_bytes),
            offset: 0,
        }
    }

    #[test]
    fn changelog_records_are_applied_in_order_and_tombstones_remove() {
        let mut state = ChangelogState::<u32>::default();
        for r in [
            record("a", Some("1")),
            record("b", Some("2")),
            record("a", Some("3")),
            record("b", None),
            record("c", Some("not a number")),
        ] {
            state.apply(&r);
        }
        assert_eq!(state.entities, HashMap::from([("a".to_string(), 3)]));
        assert_eq!(state.undecodable, 1);
    }

    #[test]
    fn the_last_checkpoint_decides_where_outputs_are_read_from() {
        let mut state = ChangelogState::<u32>::default();
        state.apply(&record(CHECKPOINT_KEY, Some(r#"{"output_offset":4}"#)));
        state.apply(&record("a", Some("1")));
        state.apply(&record(CHECKPOINT_KEY, Some(r#"{"outputs":{"out":9}}"#)));
        assert_eq!(state.checkpoint(Some("out")).read_from("out"), Some(10));
        assert!(!state.entities.contains_key(CHECKPOINT_KEY));
    }

    #[test]
    fn an_undecodable_last_checkpoint_reads_every_output() {
        let mut state = ChangelogState::<u32>::default();
        state.apply(&record(CHECKPOINT_KEY, Some(r#"{"output_offset":4}"#)));
        state.apply(&record(CHECKPOINT_KEY, Some("not json")));
        assert_eq!(state.checkpoint(Some("out")).read_from("out"), None);
    }
}
