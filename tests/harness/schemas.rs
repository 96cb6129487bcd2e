//! Validation of what tests read from Kafka against the JSON Schemas in `schemas/`.

use std::path::PathBuf;

use serde_json::Value;

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

/// Validates `instance` against `schemas/<relative>`; panics with every violation.
pub fn assert_valid(relative: &str, instance: &Value) {
    let path = schemas_dir().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{} is not a valid schema: {e}", path.display()));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "instance violates {relative}:\n  {}",
        errors.join("\n  ")
    );
}

/// Validates a raw-topic record: its value against the family schema, its headers against the
/// header contract.
pub fn assert_raw_record_valid(family: &str, record: &crate::Record) {
    let value: Value = serde_json::from_slice(&record.value).expect("raw topic values are JSON");
    assert_valid(&format!("shopify/{family}.schema.json"), &value);
    assert_valid("kafka/record-headers.schema.json", &record.headers_json());
}
