//! Compiles the event catalog (`events/<context>/<name>.v<N>.json` at the workspace root) into
//! the crate: generates a table of `(relative path, include_str!(..))` pairs.
use std::{env, fs, path::Path};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();
    let mut out = String::from("pub(crate) static CATALOG_FILES: &[(&str, &str)] = &[\n");
    for (rel, abs) in &files {
        out.push_str(&format!("    ({rel:?}, include_str!({abs:?})),\n"));
    }
    out.push_str("];\n");
    let dest = Path::new(&env::var("OUT_DIR").expect("OUT_DIR is set by cargo")).join("catalog_files.rs");
    fs::write(dest, out).expect("write catalog_files.rs");
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        println!("cargo:rerun-if-changed={}", path.display());
        if path.is_dir() {
            collect(root, &path, files);
        } else if path.extension().is_some_and(|e| e == "json") {
            let rel = path.strip_prefix(root).expect("under root").to_string_lossy().replace('\\', "/");
            let abs = fs::canonicalize(&path).expect("canonical path");
            files.push((rel, abs.to_string_lossy().into_owned()));
        }
    }
}
