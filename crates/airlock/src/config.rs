//! Settings: built-in defaults, then the TOML file (`--config` or `AIRLOCK_CONFIG`), then
//! `AIRLOCK_*` environment variables. Unknown keys in the file are an error naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The settings file, as written by a user. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    public_url: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    storage_url: Option<String>,
    bus_url: Option<String>,
    clamd: Option<String>,
    signing_secret: Option<String>,
    bootstrap_api_key: Option<String>,
    log: Option<String>,
    log_format: Option<String>,
    /// How long validation may take before `processing.timeout` quarantines the file.
    validation_timeout: Option<String>,
    /// An upload receiving no bytes for this long is aborted (`408 upload_timeout`).
    upload_idle_timeout: Option<String>,
    /// Requests per second allowed per API key (a token bucket; bursts up to twice that).
    rate_limit: Option<u32>,
    /// Uploads streaming at once per tenant.
    max_concurrent_uploads: Option<u32>,
    #[serde(default)]
    kinds: BTreeMap<String, KindFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindFile {
    max_bytes: Option<u64>,
    allowed_types: Option<Vec<String>>,
    scan: Option<ScanPolicy>,
    strip_metadata: Option<bool>,
    #[serde(default)]
    variants: Vec<Variant>,
    upload_ttl: Option<String>,
    retention: Option<String>,
    /// Largest image, in pixels (width × height), checked from the header before decoding.
    max_pixels: Option<u64>,
    /// Largest image side, in pixels.
    max_dimension: Option<u32>,
}

/// Whether a kind's files must be virus-scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanPolicy {
    /// Never promoted unscanned: a missing scanner is a start-up error, a failing one
    /// quarantines with `scan_failed`.
    Required,
    /// Scanned when a scanner is configured.
    Optional,
    Off,
}

/// A derived image (e.g. a thumbnail).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    pub width: u32,
    pub height: u32,
    #[serde(default = "default_fit")]
    pub fit: String,
    #[serde(default = "default_format")]
    pub format: String,
}

fn default_fit() -> String {
    "cover".into()
}

fn default_format() -> String {
    "webp".into()
}

/// An upload kind: the policy its files are checked against.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Kind {
    pub name: String,
    pub max_bytes: u64,
    /// MIME types or `type/*` wildcards. Wildcards never admit active content (SVG, HTML,
    /// XML, executables): such a type must be listed by its exact name.
    pub allowed_types: Vec<String>,
    pub scan: ScanPolicy,
    pub strip_metadata: bool,
    pub variants: Vec<Variant>,
    #[serde(with = "secs")]
    pub upload_ttl: Duration,
    #[serde(with = "opt_secs")]
    pub retention: Option<Duration>,
    pub max_pixels: u64,
    pub max_dimension: u32,
}

impl Kind {
    /// The built-in `default` kind, used when no kind is configured.
    pub fn default_kind() -> Kind {
        Kind {
            name: "default".into(),
            max_bytes: 1 << 30,
            allowed_types: vec!["*/*".into()],
            scan: ScanPolicy::Optional,
            strip_metadata: false,
            variants: Vec::new(),
            upload_ttl: Duration::from_secs(3600),
            retention: None,
            max_pixels: 40_000_000,
            max_dimension: 10_000,
        }
    }

    /// The image limits of this kind.
    pub fn image_limits(&self) -> crate::images::ImageLimits {
        crate::images::ImageLimits { max_pixels: self.max_pixels, max_side: self.max_dimension, ..Default::default() }
    }

    /// Does the policy allow files of (normalised) type `mime`?
    pub fn allows(&self, mime: &str) -> bool {
        let active = crate::sniff::is_active_content(mime);
        self.allowed_types.iter().any(|p| {
            let exact = !p.contains('*');
            crate::sniff::mime_matches(p, mime) && (exact || !active)
        })
    }
}

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub public_url: String,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub storage_url: String,
    pub bus_url: String,
    pub clamd: Option<String>,
    pub signing_secret: Option<String>,
    pub bootstrap_api_key: Option<String>,
    pub log: String,
    pub log_json: bool,
    pub validation_timeout: Duration,
    pub upload_idle_timeout: Duration,
    pub rate_limit: u32,
    pub max_concurrent_uploads: u32,
    pub kinds: BTreeMap<String, Kind>,
}

/// A configuration problem, reported at start.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Settings {
    /// Loads settings from an optional file and the process environment.
    ///
    /// # Errors
    /// An unreadable or invalid file (unknown keys are named), invalid values, or a policy that
    /// cannot be honoured (e.g. `scan = "required"` without a scanner).
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("AIRLOCK_")).collect();
        let file = file.map(Path::to_path_buf).or_else(|| env.get("AIRLOCK_CONFIG").map(PathBuf::from));
        let text = match &file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| ConfigError(format!("reading {}: {e}", path.display())))?),
            None => None,
        };
        Settings::from_parts(text.as_deref(), file.as_deref(), &env)
    }

    /// Resolves settings from a file's text and environment variables (testable without I/O).
    ///
    /// # Errors
    /// See [`Settings::load`].
    pub fn from_parts(text: Option<&str>, path: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Settings, ConfigError> {
        let f: FileSettings = match text {
            Some(t) => toml::from_str(t)
                .map_err(|e| ConfigError(format!("{}: {}", path.map(|p| p.display().to_string()).unwrap_or_default(), e.to_string().trim())))?,
            None => FileSettings::default(),
        };
        let pick = |var: &str, file: Option<String>| env.get(var).cloned().filter(|v| !v.is_empty()).or(file);
        let listen = pick("AIRLOCK_LISTEN", f.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
        let data_dir =
            pick("AIRLOCK_DATA_DIR", f.data_dir.map(|p| p.display().to_string())).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("./data"));
        let public_url = pick("AIRLOCK_PUBLIC_URL", f.public_url).unwrap_or_else(|| format!("http://{listen}")).trim_end_matches('/').to_owned();
        let database_url =
            pick("AIRLOCK_DATABASE_URL", f.database_url).unwrap_or_else(|| format!("sqlite://{}", data_dir.join("airlock.db").display()));
        let storage_url = pick("AIRLOCK_STORAGE_URL", f.storage_url).unwrap_or_else(|| format!("file://{}", data_dir.join("objects").display()));
        let bus_url = pick("AIRLOCK_BUS_URL", f.bus_url).unwrap_or_else(|| "embedded".into());
        let clamd = pick("AIRLOCK_CLAMD", f.clamd);
        let log_format = pick("AIRLOCK_LOG_FORMAT", f.log_format).unwrap_or_else(|| "text".into());
        let validation_timeout = parse_duration(&pick("AIRLOCK_VALIDATION_TIMEOUT", f.validation_timeout).unwrap_or_else(|| "5m".into()))
            .map_err(|e| ConfigError(format!("validation_timeout: {e}")))?;

        let upload_idle_timeout = parse_duration(&pick("AIRLOCK_UPLOAD_IDLE_TIMEOUT", f.upload_idle_timeout).unwrap_or_else(|| "30s".into()))
            .map_err(|e| ConfigError(format!("upload_idle_timeout: {e}")))?;
        let number = |var: &str, file: Option<u32>, default: u32| -> Result<u32, ConfigError> {
            match env.get(var).filter(|v| !v.is_empty()) {
                Some(v) => v.parse().map_err(|_| ConfigError(format!("{var}: `{v}` is not a number"))),
                None => Ok(file.unwrap_or(default)),
            }
        };
        let rate_limit = number("AIRLOCK_RATE_LIMIT", f.rate_limit, 1000)?;
        let max_concurrent_uploads = number("AIRLOCK_MAX_CONCURRENT_UPLOADS", f.max_concurrent_uploads, 64)?;
        if rate_limit == 0 || max_concurrent_uploads == 0 {
            return Err(ConfigError("rate_limit and max_concurrent_uploads must be positive".into()));
        }
        let mut kinds = BTreeMap::new();
        for (name, k) in f.kinds {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(ConfigError(format!("kinds.{name}: a kind's name is letters, digits, '_' and '-'")));
            }
            let d = Kind::default_kind();
            let upload_ttl = match k.upload_ttl {
                Some(s) => parse_duration(&s).map_err(|e| ConfigError(format!("kinds.{name}.upload_ttl: {e}")))?,
                None => d.upload_ttl,
            };
            let retention = k.retention.map(|s| parse_duration(&s)).transpose().map_err(|e| ConfigError(format!("kinds.{name}.retention: {e}")))?;
            let allowed_types = k.allowed_types.unwrap_or(d.allowed_types);
            for t in &allowed_types {
                if !(t == "*" || t.split_once('/').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())) {
                    return Err(ConfigError(format!("kinds.{name}.allowed_types: `{t}` is not a MIME type or pattern like image/*")));
                }
            }
            let kind = Kind {
                name: name.clone(),
                max_bytes: k.max_bytes.unwrap_or(d.max_bytes),
                allowed_types,
                scan: k.scan.unwrap_or(d.scan),
                strip_metadata: k.strip_metadata.unwrap_or(false),
                variants: k.variants,
                upload_ttl,
                retention,
                max_pixels: k.max_pixels.unwrap_or(d.max_pixels),
                max_dimension: k.max_dimension.unwrap_or(d.max_dimension),
            };
            if kind.max_bytes == 0 {
                return Err(ConfigError(format!("kinds.{name}.max_bytes must be positive")));
            }
            if kind.scan == ScanPolicy::Required && clamd.is_none() {
                return Err(ConfigError(format!("kinds.{name}.scan = \"required\" but no scanner is configured (set AIRLOCK_CLAMD or clamd)")));
            }
            kinds.insert(name, kind);
        }
        kinds.entry("default".into()).or_insert_with(Kind::default_kind);

        Ok(Settings {
            listen,
            public_url,
            data_dir,
            database_url,
            storage_url,
            bus_url,
            clamd,
            signing_secret: pick("AIRLOCK_SIGNING_SECRET", f.signing_secret),
            bootstrap_api_key: pick("AIRLOCK_BOOTSTRAP_API_KEY", f.bootstrap_api_key),
            log: pick("AIRLOCK_LOG", f.log).unwrap_or_else(|| "info".into()),
            log_json: log_format == "json",
            validation_timeout,
            upload_idle_timeout,
            rate_limit,
            max_concurrent_uploads,
            kinds,
        })
    }
}

/// Parses `500ms`, `30s`, `15m`, `2h`, `7d` (or a bare number of seconds).
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration like 30s, 15m, 2h or 7d"))?;
    let secs = match unit.trim() {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{s}` is not a duration like 30s, 15m, 2h or 7d")),
    };
    Ok(Duration::from_secs(secs))
}

mod secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

mod opt_secs {
    pub fn serialize<S: serde::Serializer>(d: &Option<std::time::Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn zero_config_gives_the_embedded_defaults() {
        let s = Settings::from_parts(None, None, &env(&[])).expect("defaults");
        assert_eq!(s.listen, "127.0.0.1:8080");
        assert_eq!(s.public_url, "http://127.0.0.1:8080");
        assert_eq!(s.database_url, "sqlite://./data/airlock.db");
        assert_eq!(s.storage_url, "file://./data/objects");
        assert_eq!(s.bus_url, "embedded");
        assert!(s.kinds.contains_key("default"));
    }

    #[test]
    fn environment_overrides_the_file() {
        let text = "listen = \"0.0.0.0:1\"\n[kinds.avatar]\nmax_bytes = 10\nallowed_types = [\"image/*\"]\nupload_ttl = \"15m\"\n";
        let s = Settings::from_parts(Some(text), None, &env(&[("AIRLOCK_LISTEN", "127.0.0.1:9")])).expect("ok");
        assert_eq!(s.listen, "127.0.0.1:9");
        let avatar = &s.kinds["avatar"];
        assert_eq!((avatar.max_bytes, avatar.upload_ttl), (10, Duration::from_secs(900)));
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        let err = Settings::from_parts(Some("[kinds.avatar]\nmax_bytez = 3\n"), Some(Path::new("a.toml")), &env(&[])).expect_err("unknown");
        assert!(err.to_string().contains("max_bytez"), "{err}");
        let err = Settings::from_parts(Some("lisen = \"x\"\n"), None, &env(&[])).expect_err("unknown");
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn required_scanning_without_a_scanner_is_a_startup_error() {
        let err = Settings::from_parts(Some("[kinds.kyc]\nscan = \"required\"\n"), None, &env(&[])).expect_err("no scanner");
        assert!(err.to_string().contains("kinds.kyc.scan"), "{err}");
        assert!(Settings::from_parts(Some("[kinds.kyc]\nscan = \"required\"\n"), None, &env(&[("AIRLOCK_CLAMD", "tcp://127.0.0.1:3310")])).is_ok());
    }

    #[test]
    fn wildcards_never_admit_active_content() {
        let mut k = Kind::default_kind();
        assert!(k.allows("image/png"));
        assert!(!k.allows("image/svg+xml"));
        assert!(!k.allows("text/html"));
        k.allowed_types = vec!["image/*".into(), "image/svg+xml".into()];
        assert!(k.allows("image/svg+xml"));
        assert!(!k.allows("application/pdf"));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("soon").is_err());
    }
}
