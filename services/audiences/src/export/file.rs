//! The `file` destination: per audience, a snapshot of the current members and one delta file
//! per batch, in CSV or JSONL, under `<dir>/<audience>/`. Files are written to a temporary name,
//! fsynced and renamed, so a reader never sees half a file; a delta is named after its batch
//! (`<created>-<batch id>-<op>`), so a batch written again after a crash replaces itself. Only
//! the newest `keep_deltas` deltas are kept. Rows hold hashes, never raw contact data.
//!
//! The snapshot is kept by the exporter of the batches' partitions it owns: one exporter per
//! directory (a dev stack, or one pod with its volume) gives a complete snapshot.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aftercart_delivery::Answer;
use bytes::Bytes;
use serde_json::Value;

use crate::config::{FileFormat, FileOptions};
use crate::domain::batch::Batch;
use crate::export::plain_member;
use crate::platform::Op;

/// Columns of snapshots (deltas add `op` in front).
const COLUMNS: [&str; 5] = [
    "shop",
    "person",
    "customer_id",
    "email_sha256",
    "phone_sha256",
];

/// Members by (shop, person), each as its rendered snapshot row: rewriting the snapshot after
/// a batch joins rows rendered once, instead of rendering every member again.
type Snapshot = BTreeMap<(String, String), String>;

/// The longest between two sweeps of a deltas directory for files past the retention. Ages
/// take a `stat` of every delta (up to `keep_deltas`, 1,000 by default): done after every batch
/// it was a fifth of the audiences service's CPU in the whole-service benchmark. A delta
/// outlives the retention (days) by at most this.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct FileWriter {
    options: FileOptions,
    /// Audience → its members, loaded from the snapshot file on first use.
    snapshots: Arc<Mutex<HashMap<String, Snapshot>>>,
    /// Deltas directory → when its deltas' ages were last checked ([`SWEEP_EVERY`]).
    swept: Arc<Mutex<HashMap<PathBuf, Instant>>>,
}

impl FileWriter {
    pub fn new(options: FileOptions) -> FileWriter {
        FileWriter {
            options,
            snapshots: Arc::default(),
            swept: Arc::default(),
        }
    }

    /// Writes the batch's delta and the audience's new snapshot; `Err` (logged) on a disk error,
    /// for the caller to retry.
    pub async fn write(&self, batch: Batch) -> Result<Answer, &'static str> {
        let writer = self.clone();
        let result = tokio::task::spawn_blocking(move || writer.write_blocking(&batch))
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the file writer panicked")));
        match result {
            Ok(()) => Ok(Answer {
                status: http::StatusCode::OK,
                retry_after: None,
                body: Bytes::new(),
            }),
            Err(error) => {
                tracing::error!(dir = %self.options.dir.display(), %error, "Cannot write an audience file; retrying.");
                Err("io")
            }
        }
    }

    fn extension(&self) -> &'static str {
        match self.options.format {
            FileFormat::Csv => "csv",
            FileFormat::Jsonl => "jsonl",
        }
    }

    fn write_blocking(&self, batch: &Batch) -> std::io::Result<()> {
        let audience_dir = self.options.dir.join(&batch.audience);
        let deltas = audience_dir.join("deltas");
        fs::create_dir_all(&deltas)?;
        let ext = self.extension();
        let members: Vec<Value> = batch
            .members
            .iter()
            .map(|m| plain_member(batch, m))
            .collect();
        let op = match batch.op {
            Op::Add => "add",
            Op::Remove => "remove",
        };
        let stamp: String = batch
            .created_at
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let delta = deltas.join(format!("{stamp}-{}-{op}.{ext}", batch.batch_id));
        let mut rendered = self.header(Some(op));
        for member in &members {
            self.render_row(&mut rendered, member, Some(op));
        }
        self.write_atomically(&delta, &rendered)?;

        let mut snapshots = self.snapshots.lock().expect("no panics while held");
        let snapshot_path = audience_dir.join(format!("snapshot.{ext}"));
        if !snapshots.contains_key(&batch.audience) {
            let loaded = self.load(&snapshot_path)?;
            snapshots.insert(batch.audience.clone(), loaded);
        }
        let snapshot = snapshots.get_mut(&batch.audience).expect("loaded above");
        // The batch is applied in place and undone if the file cannot be written, so memory
        // and disk agree either way: no copy of the whole audience per batch.
        let mut undo = Vec::with_capacity(members.len());
        for member in members {
            let key = (
                member["shop"].as_str().unwrap_or_default().to_string(),
                member["person"].as_str().unwrap_or_default().to_string(),
            );
            let before = match batch.op {
                Op::Add => {
                    let mut row = String::new();
                    self.render_row(&mut row, &member, None);
                    snapshot.insert(key.clone(), row)
                }
                Op::Remove => snapshot.remove(&key),
            };
            undo.push((key, before));
        }
        let mut rendered = self.header(None);
        rendered.reserve(snapshot.values().map(String::len).sum());
        for row in snapshot.values() {
            rendered.push_str(row);
        }
        if let Err(error) = self.write_atomically(&snapshot_path, &rendered) {
            // Newest first: a member twice in one batch gets its first state back.
            for (key, before) in undo.into_iter().rev() {
                match before {
                    Some(row) => snapshot.insert(key, row),
                    None => snapshot.remove(&key),
                };
            }
            return Err(error);
        }
        drop(snapshots);
        self.rotate(&deltas)
    }

    /// Reads a snapshot written earlier (a missing file is an empty audience).
    fn load(&self, path: &Path) -> std::io::Result<Snapshot> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Snapshot::new())
            }
            Err(error) => return Err(error),
        };
        let mut snapshot = Snapshot::new();
        let rows: Vec<Value> = match self.options.format {
            FileFormat::Jsonl => text
                .lines()
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect(),
            FileFormat::Csv => csv_records(&text)
                .into_iter()
                .skip(1)
                .filter(|cells| cells.iter().any(|cell| !cell.is_empty()))
                .map(|cells| {
                    let mut row = serde_json::Map::new();
                    for (column, cell) in COLUMNS.iter().zip(cells) {
                        if !cell.is_empty() {
                            let value = match *column {
                                "customer_id" => {
                                    cell.parse::<u64>().map_or(Value::Null, Value::from)
                                }
                                _ => Value::from(cell),
                            };
                            row.insert((*column).to_string(), value);
                        }
                    }
                    Value::Object(row)
                })
                .collect(),
        };
        for row in rows {
            let key = (
                row["shop"].as_str().unwrap_or_default().to_string(),
                row["person"].as_str().unwrap_or_default().to_string(),
            );
            let mut rendered = String::new();
            self.render_row(&mut rendered, &row, None);
            snapshot.insert(key, rendered);
        }
        Ok(snapshot)
    }

    /// The first line of a file: the CSV header (deltas add `op` in front), none for JSONL.
    fn header(&self, op: Option<&str>) -> String {
        let mut out = String::new();
        if let FileFormat::Csv = self.options.format {
            if op.is_some() {
                out.push_str("op,");
            }
            out.push_str(&COLUMNS.join(","));
            out.push('\n');
        }
        out
    }

    /// Appends one member's line (with `op` for a delta).
    fn render_row(&self, out: &mut String, row: &Value, op: Option<&str>) {
        match self.options.format {
            FileFormat::Jsonl => {
                match (op, row.as_object()) {
                    (Some(op), Some(object)) => {
                        let mut object = object.clone();
                        object.insert("op".into(), op.into());
                        out.push_str(&Value::Object(object).to_string());
                    }
                    _ => out.push_str(&row.to_string()),
                }
                out.push('\n');
            }
            FileFormat::Csv => {
                if let Some(op) = op {
                    out.push_str(op);
                    out.push(',');
                }
                for (n, column) in COLUMNS.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    match &row[*column] {
                        Value::String(s) => push_csv_cell(out, s),
                        Value::Number(number) => out.push_str(&number.to_string()),
                        _ => {}
                    }
                }
                out.push('\n');
            }
        }
    }

    fn write_atomically(&self, path: &Path, content: &str) -> std::io::Result<()> {
        let temporary = path.with_extension("tmp");
        {
            let mut file = fs::File::create(&temporary)?;
            file.write_all(content.as_bytes())?;
            file.sync_all()?;
        }
        fs::rename(&temporary, path)?;
        if let Some(parent) = path.parent() {
            // The rename itself is durable once the directory is synced.
            fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    }

    /// Deletes deltas older than the retention (their ages checked at most every
    /// [`SWEEP_EVERY`], or a tenth of a shorter retention), and the oldest beyond
    /// `keep_deltas` (names sort by creation time; counting them needs no `stat`).
    fn rotate(&self, deltas: &Path) -> std::io::Result<()> {
        let sweep = {
            let mut swept = self.swept.lock().expect("no panics while held");
            let every = SWEEP_EVERY.min(self.options.delta_retention / 10);
            let due = swept.get(deltas).is_none_or(|at| at.elapsed() >= every);
            if due {
                swept.insert(deltas.to_path_buf(), Instant::now());
            }
            due
        };
        let mut names: Vec<PathBuf> = Vec::new();
        for entry in fs::read_dir(deltas)?.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_none_or(|e| e == "tmp") {
                continue;
            }
            let age = || {
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|modified| modified.elapsed().ok())
                    .unwrap_or_default()
            };
            if sweep && age() > self.options.delta_retention {
                fs::remove_file(&path)?;
            } else {
                names.push(path);
            }
        }
        if names.len() <= self.options.keep_deltas {
            return Ok(());
        }
        names.sort();
        let excess = names.len() - self.options.keep_deltas;
        for old in &names[..excess] {
            fs::remove_file(old)?;
        }
        Ok(())
    }
}

/// Shop domains, pseudonyms and hex hashes never hold commas or quotes; quote anything else.
fn push_csv_cell(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// The records of a CSV file as [`push_csv_cell`] writes them (RFC 4180): a cell in double
/// quotes may hold commas, line breaks and doubled quotes, so records are not lines.
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut cell)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut cell));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => cell.push(c),
        }
    }
    if !cell.is_empty() || !record.is_empty() {
        record.push(cell);
        records.push(record);
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::batch::Member;
    use crate::platform::Platform;

    fn batch(op: Op, people: &[(&str, &str)], id: &str) -> Batch {
        Batch {
            batch_id: id.repeat(32 / id.len()),
            shop: "s.myshopify.com".into(),
            audience: "buyers".into(),
            destination: "files".into(),
            platform: Platform::Plain,
            op,
            created_at: "2026-11-23T12:00:00.000Z".into(),
            members: people
                .iter()
                .map(|(person, hash)| Member {
                    person: (*person).into(),
                    customer_id: person.strip_prefix("c/").and_then(|c| c.parse().ok()),
                    row: serde_json::json!({ "email_sha256": hash }),
                    consent: None,
                })
                .collect(),
        }
    }

    fn writer(format: FileFormat, keep: usize) -> (FileWriter, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "aftercart-files-{}-{:?}-{keep}",
            std::process::id(),
            format
        ));
        let _ = fs::remove_dir_all(&dir);
        let options = FileOptions {
            dir: dir.clone(),
            format,
            keep_deltas: keep,
            delta_retention: std::time::Duration::from_secs(3600),
        };
        (FileWriter::new(options), dir)
    }

    #[test]
    fn adds_and_removes_keep_a_csv_snapshot_and_write_one_delta_per_batch() {
        let (writer, dir) = writer(FileFormat::Csv, 10);
        writer
            .write_blocking(&batch(Op::Add, &[("c/1", "aa"), ("c/2", "bb")], "a1"))
            .unwrap();
        writer
            .write_blocking(&batch(Op::Remove, &[("c/1", "aa")], "b2"))
            .unwrap();
        let snapshot = fs::read_to_string(dir.join("buyers/snapshot.csv")).unwrap();
        assert_eq!(
            snapshot,
            "shop,person,customer_id,email_sha256,phone_sha256\ns.myshopify.com,c/2,2,bb,\n"
        );
        let deltas = fs::read_dir(dir.join("buyers/deltas")).unwrap().count();
        assert_eq!(deltas, 2);
        // A fresh writer (a restart) continues from the snapshot on disk.
        let (again, _) = (FileWriter::new(writer.options.clone()), ());
        again
            .write_blocking(&batch(Op::Add, &[("c/3", "cc")], "c3"))
            .unwrap();
        let snapshot = fs::read_to_string(dir.join("buyers/snapshot.csv")).unwrap();
        assert!(snapshot.contains("c/2") && snapshot.contains("c/3"));
        fs::remove_dir_all(dir).unwrap();
    }

    /// Adds c/1 (aa), then writes each of `failing` while the snapshot cannot be written (each
    /// must fail), then adds c/3 (cc) once it can: the snapshot holds c/1 as first written and
    /// c/3, as if the failed batches had never come.
    fn assert_failed_batches_leave_no_trace(keep: usize, failing: &[Batch]) {
        let (writer, dir) = writer(FileFormat::Csv, keep);
        writer
            .write_blocking(&batch(Op::Add, &[("c/1", "aa")], "a1"))
            .unwrap();
        // A directory where the temporary snapshot goes: the snapshot write fails.
        let blocker = dir.join("buyers/snapshot.tmp");
        fs::create_dir_all(&blocker).unwrap();
        for failed in failing {
            assert!(writer.write_blocking(failed).is_err());
        }
        fs::remove_dir_all(&blocker).unwrap();
        writer
            .write_blocking(&batch(Op::Add, &[("c/3", "cc")], "z9"))
            .unwrap();
        let snapshot = fs::read_to_string(dir.join("buyers/snapshot.csv")).unwrap();
        assert_eq!(
            snapshot,
            "shop,person,customer_id,email_sha256,phone_sha256\n\
             s.myshopify.com,c/1,1,aa,\ns.myshopify.com,c/3,3,cc,\n"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_batch_whose_snapshot_cannot_be_written_leaves_the_snapshot_as_it_was() {
        assert_failed_batches_leave_no_trace(
            7,
            &[
                batch(Op::Add, &[("c/2", "bb"), ("c/1", "zz")], "b2"),
                batch(Op::Remove, &[("c/1", "aa")], "c3"),
            ],
        );
    }

    #[test]
    fn a_member_twice_in_a_batch_that_fails_gets_its_first_row_back() {
        assert_failed_batches_leave_no_trace(
            11,
            &[batch(
                Op::Add,
                &[("c/1", "zz"), ("c/2", "bb"), ("c/1", "yy")],
                "b2",
            )],
        );
    }

    #[test]
    fn a_changed_contact_replaces_the_kept_row_and_a_removed_member_leaves_memory() {
        let (writer, dir) = writer(FileFormat::Csv, 12);
        writer
            .write_blocking(&batch(Op::Add, &[("c/1", "aa"), ("c/2", "bb")], "a1"))
            .unwrap();
        writer
            .write_blocking(&batch(Op::Add, &[("c/1", "ee")], "b2"))
            .unwrap();
        let snapshot = fs::read_to_string(dir.join("buyers/snapshot.csv")).unwrap();
        assert!(
            snapshot.contains("c/1,1,ee,") && !snapshot.contains(",aa,"),
            "{snapshot}"
        );
        writer
            .write_blocking(&batch(Op::Remove, &[("c/1", "ee")], "c3"))
            .unwrap();
        let snapshot = fs::read_to_string(dir.join("buyers/snapshot.csv")).unwrap();
        assert!(!snapshot.contains("c/1"), "{snapshot}");
        // No row of the removed member is kept in memory either.
        let snapshots = writer.snapshots.lock().unwrap();
        let kept: Vec<&String> = snapshots["buyers"].values().collect();
        assert_eq!(kept, ["s.myshopify.com,c/2,2,bb,\n"]);
        drop(snapshots);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn snapshots_and_deltas_keep_their_bytes_in_both_formats() {
        let mut add = batch(Op::Add, &[("c/1", "aa"), ("e/9", "bb")], "a1");
        add.members[1].row = serde_json::json!({ "email_sha256": "bb", "phone_sha256": "dd" });
        // A delta is never read back: its cells are quoted as written.
        let mut remove = batch(Op::Remove, &[("c/1", "aa")], "b2");
        remove.members[0].row =
            serde_json::json!({ "email_sha256": "aa", "phone_sha256": "p,\"q" });
        let expected = [
            (
                FileFormat::Csv,
                "op,shop,person,customer_id,email_sha256,phone_sha256\n\
                 remove,s.myshopify.com,c/1,1,aa,\"p,\"\"q\"\n",
                "shop,person,customer_id,email_sha256,phone_sha256\n\
                 s.myshopify.com,e/9,,bb,dd\n",
            ),
            (
                FileFormat::Jsonl,
                "{\"customer_id\":1,\"email_sha256\":\"aa\",\"op\":\"remove\",\
                 \"person\":\"c/1\",\"phone_sha256\":\"p,\\\"q\",\"shop\":\"s.myshopify.com\"}\n",
                "{\"customer_id\":null,\"email_sha256\":\"bb\",\"person\":\"e/9\",\
                 \"phone_sha256\":\"dd\",\"shop\":\"s.myshopify.com\"}\n",
            ),
        ];
        for (format, delta, snapshot) in expected {
            let (writer, dir) = writer(format, 13);
            writer.write_blocking(&add).unwrap();
            writer.write_blocking(&remove).unwrap();
            let ext = writer.extension();
            let name = format!("20261123T120000000Z-{}-remove.{ext}", remove.batch_id);
            let written = fs::read_to_string(dir.join("buyers/deltas").join(name)).unwrap();
            assert_eq!(written, delta);
            let written = fs::read_to_string(dir.join(format!("buyers/snapshot.{ext}"))).unwrap();
            assert_eq!(written, snapshot);
            // A restart renders the same bytes from the snapshot on disk.
            let again = FileWriter::new(writer.options.clone());
            again.write_blocking(&remove).unwrap();
            let written = fs::read_to_string(dir.join(format!("buyers/snapshot.{ext}"))).unwrap();
            assert_eq!(written, snapshot);
            fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn a_csv_snapshot_with_quoted_cells_reloads_as_written() {
        let mut add = batch(Op::Add, &[("c/1", "aa"), ("c/2", "bb")], "a1");
        add.members[0].row =
            serde_json::json!({ "email_sha256": "a,\"a\"", "phone_sha256": "line\nbreak" });
        let (writer, dir) = writer(FileFormat::Csv, 14);
        writer.write_blocking(&add).unwrap();
        let path = dir.join("buyers/snapshot.csv");
        let first = fs::read_to_string(&path).unwrap();
        // A restart reads the snapshot back and rewrites it after one more batch: every cell
        // comes back as written, quotes, commas and line breaks included.
        let again = FileWriter::new(writer.options.clone());
        again
            .write_blocking(&batch(Op::Add, &[("c/3", "cc")], "c3"))
            .unwrap();
        let after = fs::read_to_string(&path).unwrap();
        assert_eq!(
            after,
            format!("{first}s.myshopify.com,c/3,3,cc,\n"),
            "the reloaded snapshot lost or mangled a row"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_same_batch_written_twice_is_one_delta_and_one_member() {
        let (writer, dir) = writer(FileFormat::Jsonl, 10);
        let add = batch(Op::Add, &[("c/1", "aa")], "d4");
        writer.write_blocking(&add).unwrap();
        writer.write_blocking(&add).unwrap();
        let snapshot = fs::read_to_string(dir.join("buyers/snapshot.jsonl")).unwrap();
        assert_eq!(snapshot.lines().count(), 1);
        let line: Value = serde_json::from_str(snapshot.lines().next().unwrap()).unwrap();
        assert_eq!(line["email_sha256"], "aa");
        assert_eq!(fs::read_dir(dir.join("buyers/deltas")).unwrap().count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_the_newest_deltas_are_kept() {
        let (writer, dir) = writer(FileFormat::Csv, 2);
        for id in ["e5", "f6", "a7"] {
            let mut b = batch(Op::Add, &[("c/1", "aa")], id);
            b.created_at = format!("2026-11-23T12:00:0{}Z", &id[1..]);
            writer.write_blocking(&b).unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(dir.join("buyers/deltas"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2);
        assert!(names[0].starts_with("20261123T120006Z"), "{names:?}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn deltas_older_than_the_retention_are_deleted() {
        let (mut writer, dir) = writer(FileFormat::Csv, 100);
        writer.options.delta_retention = std::time::Duration::from_millis(500);
        writer
            .write_blocking(&batch(Op::Add, &[("c/1", "aa")], "b8"))
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1000));
        writer
            .write_blocking(&batch(Op::Add, &[("c/2", "bb")], "c9"))
            .unwrap();
        let left = fs::read_dir(dir.join("buyers/deltas")).unwrap().count();
        assert_eq!(
            left, 1,
            "the first delta outlived the retention, the second did not"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
