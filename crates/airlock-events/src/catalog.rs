//! The event catalog: every event type's JSON Schema (compiled in from
//! `events/<context>/<name>.v<N>.json`), its visibility, payload validation, and the
//! breaking-change check between two catalogs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use serde_json::Value;

use crate::EventError;

include!(concat!(env!("OUT_DIR"), "/catalog_files.rs"));

/// Who may rely on an event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// A versioned contract other teams subscribe to (webhooks may subscribe only to these).
    Public,
    /// The pipeline's own flow: visible in traces, free to change.
    Internal,
}

/// One event type at one version.
pub struct EventType {
    pub name: String,
    pub version: u32,
    pub visibility: Visibility,
    pub description: String,
    /// Path of the schema file relative to the catalog root.
    pub file: String,
    pub schema: Value,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventType").field("name", &self.name).field("version", &self.version).field("visibility", &self.visibility).finish()
    }
}

impl EventType {
    /// `<name>.v<version>`.
    pub fn versioned(&self) -> String {
        format!("{}.v{}", self.name, self.version)
    }
}

/// Every known event type, keyed by (name, version).
pub struct Catalog {
    types: BTreeMap<(String, u32), EventType>,
}

static BUILTIN: LazyLock<Result<Catalog, String>> =
    LazyLock::new(|| Catalog::from_files(CATALOG_FILES.iter().map(|(p, s)| ((*p).to_owned(), (*s).to_owned()))));

impl Catalog {
    /// The catalog compiled into this binary.
    ///
    /// # Errors
    /// Only if a compiled-in schema is malformed (a build defect, caught by the tests).
    pub fn builtin() -> Result<&'static Catalog, EventError> {
        BUILTIN.as_ref().map_err(|e| EventError::Catalog(e.clone()))
    }

    /// Loads a catalog from a directory laid out as `<context>/<name>.v<N>.json`.
    ///
    /// # Errors
    /// Unreadable files, malformed JSON or schemas, or badly named files.
    pub fn from_dir(root: &Path) -> Result<Catalog, EventError> {
        let mut files = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| EventError::Catalog(format!("{}: {e}", dir.display())))?;
            for entry in entries {
                let path = entry.map_err(|e| EventError::Catalog(e.to_string()))?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "json") {
                    let text = std::fs::read_to_string(&path).map_err(|e| EventError::Catalog(format!("{}: {e}", path.display())))?;
                    let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
                    files.push((rel, text));
                }
            }
        }
        Catalog::from_files(files).map_err(EventError::Catalog)
    }

    fn from_files(files: impl IntoIterator<Item = (String, String)>) -> Result<Catalog, String> {
        let mut types = BTreeMap::new();
        for (rel, text) in files {
            let (context, file) = rel.split_once('/').ok_or_else(|| format!("{rel}: expected <context>/<name>.v<N>.json"))?;
            let stem = file.strip_suffix(".json").unwrap_or(file);
            let (name, version) = crate::envelope::split_versioned_type(stem).ok_or_else(|| format!("{rel}: file name must be <name>.v<N>.json"))?;
            let schema: Value = serde_json::from_str(&text).map_err(|e| format!("{rel}: invalid JSON: {e}"))?;
            let visibility = match schema.get("x-airlock-visibility").and_then(Value::as_str) {
                Some("public") => Visibility::Public,
                Some("internal") => Visibility::Internal,
                other => {
                    return Err(format!("{rel}: x-airlock-visibility must be \"public\" or \"internal\", found {other:?}"));
                }
            };
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&schema)
                .map_err(|e| format!("{rel}: invalid JSON Schema: {e}"))?;
            let full = format!("{context}.{name}");
            let ty = EventType {
                name: full.clone(),
                version,
                visibility,
                description: schema.get("description").and_then(Value::as_str).unwrap_or_default().to_owned(),
                file: rel.clone(),
                schema,
                validator,
            };
            if types.insert((full.clone(), version), ty).is_some() {
                return Err(format!("{rel}: {full}.v{version} is defined twice"));
            }
        }
        Ok(Catalog { types })
    }

    /// Every type, ordered by name then version.
    pub fn types(&self) -> impl Iterator<Item = &EventType> {
        self.types.values()
    }

    /// One type at one version.
    pub fn get(&self, name: &str, version: u32) -> Option<&EventType> {
        self.types.get(&(name.to_owned(), version))
    }

    /// Looks up `name.vN`, or the newest version of `name`.
    pub fn find(&self, spec: &str) -> Option<&EventType> {
        if let Some((name, v)) = crate::envelope::split_versioned_type(spec)
            && let Some(t) = self.get(name, v)
        {
            return Some(t);
        }
        self.types.values().filter(|t| t.name == spec).max_by_key(|t| t.version)
    }

    /// Checks that `payload` is valid for `name` at `version`.
    ///
    /// # Errors
    /// [`EventError::UnknownType`] or [`EventError::InvalidPayload`] naming the failing field
    /// (a JSON pointer) and the schema.
    pub fn validate(&self, name: &str, version: u32, payload: &Value) -> Result<&EventType, EventError> {
        let ty = self.get(name, version).ok_or_else(|| EventError::UnknownType(format!("{name}.v{version}")))?;
        if let Some(err) = ty.validator.iter_errors(payload).next() {
            let field = err.instance_path().to_string();
            return Err(EventError::InvalidPayload {
                event: ty.versioned(),
                schema: ty.file.clone(),
                field: if field.is_empty() { "/".into() } else { field },
                message: err.to_string(),
            });
        }
        Ok(ty)
    }

    /// Every breaking change from `old` to `self` (removed types, removed or retyped fields,
    /// new required fields), each explained in one line. Empty when `self` is compatible.
    pub fn breaking_changes_since(&self, old: &Catalog) -> Vec<String> {
        let mut out = Vec::new();
        for ((name, version), old_ty) in &old.types {
            let Some(new_ty) = self.types.get(&(name.clone(), *version)) else {
                out.push(format!("{name}.v{version}: event type removed (publish a new version beside it instead)"));
                continue;
            };
            if old_ty.visibility == Visibility::Public && new_ty.visibility == Visibility::Internal {
                out.push(format!("{name}.v{version}: visibility changed from public to internal"));
            }
            compare_object(&format!("{name}.v{version}"), "", &old_ty.schema, &new_ty.schema, &mut out);
        }
        out
    }
}

fn type_set(schema: &Value) -> Vec<String> {
    let mut v: Vec<String> = match schema.get("type") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => vec![],
    };
    v.sort();
    v
}

fn required(schema: &Value) -> Vec<&str> {
    schema.get("required").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

fn compare_object(ty: &str, path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    let empty = serde_json::Map::new();
    let old_props = old.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    let new_props = new.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    for (field, old_field) in old_props {
        let at = format!("{path}/{field}");
        match new_props.get(field) {
            None => out.push(format!("{ty}: field `{at}` removed")),
            Some(new_field) => {
                let (ot, nt) = (type_set(old_field), type_set(new_field));
                if ot != nt {
                    out.push(format!("{ty}: field `{at}` retyped from {} to {}", ot.join("|"), nt.join("|")));
                } else {
                    compare_object(ty, &at, old_field, new_field, out);
                }
            }
        }
    }
    let old_required = required(old);
    for field in required(new) {
        if !old_required.contains(&field) {
            out.push(format!("{ty}: field `{path}/{field}` became required (existing producers omit it)"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_builtin_catalog_compiles_and_knows_the_public_contract() {
        let cat = Catalog::builtin().expect("catalog");
        for t in ["file.uploaded", "file.promoted", "file.quarantined", "file.variant.generated", "file.deleted", "upload.expired"] {
            let ty = cat.get(t, 1).unwrap_or_else(|| panic!("{t}.v1 missing"));
            assert_eq!(ty.visibility, Visibility::Public, "{t}");
        }
        assert_eq!(cat.get("validation.passed", 1).map(|t| t.visibility), Some(Visibility::Internal));
    }

    #[test]
    fn an_invalid_payload_names_the_field_and_the_schema() {
        let cat = Catalog::builtin().expect("catalog");
        let err = cat
            .validate(
                "file.deleted",
                1,
                &json!({"file_id": "0190a0a0-0000-7000-8000-000000000000", "user_id": null, "kind": "a", "cause": "boredom"}),
            )
            .expect_err("invalid cause");
        let msg = err.to_string();
        assert!(msg.contains("/cause"), "{msg}");
        assert!(msg.contains("file.deleted.v1"), "{msg}");
        assert!(msg.contains("file/deleted.v1.json"), "{msg}");
        let err =
            cat.validate("file.deleted", 1, &json!({"file_id": "not-a-uuid", "user_id": null, "kind": "a", "cause": "user"})).expect_err("bad uuid");
        assert!(err.to_string().contains("/file_id"), "{err}");
    }

    #[test]
    fn unknown_types_are_refused() {
        let cat = Catalog::builtin().expect("catalog");
        assert!(matches!(cat.validate("file.exploded", 1, &json!({})), Err(EventError::UnknownType(_))));
    }

    fn catalog(files: &[(&str, Value)]) -> Catalog {
        Catalog::from_files(files.iter().map(|(p, v)| ((*p).to_owned(), v.to_string()))).expect("valid")
    }

    fn schema(props: Value, req: &[&str]) -> Value {
        json!({"x-airlock-visibility": "public", "type": "object", "properties": props, "required": req})
    }

    #[test]
    fn additive_changes_are_compatible_and_breaking_ones_are_explained() {
        let old = catalog(&[
            (
                "a/b.v1.json",
                schema(
                    json!({"x": {"type": "string"}, "y": {"type": "integer"}, "o": {"type": "object", "properties": {"z": {"type": "string"}}}}),
                    &["x"],
                ),
            ),
            ("a/gone.v1.json", schema(json!({}), &[])),
        ]);
        let additive = catalog(&[
            (
                "a/b.v1.json",
                schema(
                    json!({"x": {"type": "string"}, "y": {"type": "integer"}, "o": {"type": "object", "properties": {"z": {"type": "string"}}}, "new": {"type": "string"}}),
                    &["x"],
                ),
            ),
            ("a/gone.v1.json", schema(json!({}), &[])),
            ("a/b.v2.json", schema(json!({}), &[])),
        ]);
        assert!(additive.breaking_changes_since(&old).is_empty());
        let breaking = catalog(&[(
            "a/b.v1.json",
            schema(json!({"x": {"type": "integer"}, "o": {"type": "object", "properties": {}}, "n": {"type": "string"}}), &["x", "n"]),
        )]);
        let problems = breaking.breaking_changes_since(&old).join("\n");
        assert!(problems.contains("a.gone.v1: event type removed"), "{problems}");
        assert!(problems.contains("`/x` retyped from string to integer"), "{problems}");
        assert!(problems.contains("`/y` removed"), "{problems}");
        assert!(problems.contains("`/o/z` removed"), "{problems}");
        assert!(problems.contains("`/n` became required"), "{problems}");
    }
}
