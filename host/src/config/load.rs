//! Reading the file and reporting problems as `file:line:col: message`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Config;

/// The text a config came from, kept so that any later check can turn a byte span into a
/// line and column.
#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    /// Folder that relative paths in the config are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub fn resolve(&self, relative: &str) -> PathBuf {
        let path = Path::new(relative);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir().join(path)
        }
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Line and column, 1-based; `None` when the problem has no place in the file.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Collects every problem found while checking a config, so that one run reports them all,
/// and every file the config names (the inputs a reload watches).
pub struct Diagnostics {
    source: Arc<SourceFile>,
    errors: Vec<ConfigError>,
    inputs: Vec<PathBuf>,
}

impl Diagnostics {
    pub fn new(source: Arc<SourceFile>) -> Self {
        Diagnostics {
            inputs: vec![source.path.clone()],
            source,
            errors: Vec::new(),
        }
    }

    pub fn source(&self) -> &Arc<SourceFile> {
        &self.source
    }

    /// A file the config names (a plugin module, an `@file:`, a certificate), resolved against
    /// the config's folder and remembered as an input of this config.
    pub fn input(&mut self, relative: &str) -> PathBuf {
        let path = self.source.resolve(relative);
        if !self.inputs.contains(&path) {
            self.inputs.push(path.clone());
        }
        path
    }

    /// The config file itself, then every file it named, in the order they were read.
    pub fn inputs(&self) -> &[PathBuf] {
        &self.inputs
    }

    /// Records a problem at a span of the file. Defaults (which have no place in the file)
    /// use the empty span `0..0` and are reported without a position.
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let position = (span != (0..0)).then(|| self.source.line_col(span.start));
        self.errors.push(ConfigError {
            file: self.source.path.clone(),
            position,
            message: message.into(),
        });
    }

    pub fn error_count(&self) -> usize {
        self.errors.len()
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    pub fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }

    /// `Ok(value)` when nothing was reported, else every error.
    pub fn finish<T>(self, value: T) -> Result<T, Vec<ConfigError>> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.errors)
        }
    }
}

/// A parsed config and the text it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub source: Arc<SourceFile>,
}

pub fn load_file(path: &Path) -> Result<LoadedConfig, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        vec![ConfigError {
            file: path.to_path_buf(),
            position: None,
            message: format!("cannot read config: {err}"),
        }]
    })?;
    load_str(path, text)
}

/// Parses config text; `path` names it in errors and anchors relative paths.
pub fn load_str(path: &Path, text: String) -> Result<LoadedConfig, Vec<ConfigError>> {
    let source = Arc::new(SourceFile {
        path: path.to_path_buf(),
        text,
    });
    let mut diagnostics = Diagnostics::new(source.clone());
    let parsed = toml::de::Deserializer::parse(&source.text)
        .map_err(|err| (None, err))
        .and_then(|deserializer| {
            serde_path_to_error::deserialize::<_, Config>(deserializer).map_err(|err| {
                let key_path = err.path().to_string();
                (Some(key_path), err.into_inner())
            })
        });
    match parsed {
        Ok(config) => Ok(LoadedConfig { config, source }),
        Err((key_path, err)) => {
            let message = err.message().trim_end().to_owned();
            let message = match key_path.as_deref() {
                // serde_path_to_error also names the internals of `Spanned` values; keep the
                // path the user wrote.
                Some(path) if path != "." && !path.is_empty() => {
                    let clean: Vec<&str> = path
                        .split('.')
                        .filter(|segment| !segment.starts_with("$__"))
                        .collect();
                    format!("{}: {message}", clean.join("."))
                }
                _ => message,
            };
            diagnostics.error(err.span().unwrap_or(0..0), message);
            Err(diagnostics.into_errors())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        load_str(Path::new("gw.toml"), text.to_owned())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn unknown_key_has_position_and_path() {
        let errs = errors("[server]\nlisten = \"127.0.0.1:0\"\nlisten_backlog = 5\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("gw.toml:3:1: server"), "{errs:?}");
        assert!(errs[0].contains("listen_backlog"), "{errs:?}");
    }

    #[test]
    fn bad_duration_points_at_value() {
        let errs = errors(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.a]\ntargets = [{ addr = \"127.0.0.1:1\" }]\nconnect_timeout = \"5 parsecs\"\n",
        );
        assert!(
            errs[0].starts_with("gw.toml:5:19: upstreams.a.connect_timeout"),
            "{errs:?}"
        );
        assert!(errs[0].contains("unknown duration unit"), "{errs:?}");
    }

    #[test]
    fn out_of_range_numbers_point_at_value() {
        let errs = errors(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = 0\n[upstreams.a]\ntargets = [{ addr = \"127.0.0.1:1\" }]\nretry = { attempts = 50 }\n",
        );
        assert_eq!(
            errs.len(),
            1,
            "parsing stops at the first type error: {errs:?}"
        );
        assert!(
            errs[0].starts_with("gw.toml:3:19: server.max_connections: must be at least 1"),
            "{errs:?}"
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let errs = errors("[server\nlisten = 1\n");
        assert!(errs[0].starts_with("gw.toml:1:"), "{errs:?}");
    }

    #[test]
    fn line_col_counts_characters() {
        let source = SourceFile {
            path: "x".into(),
            text: "ab\nçd\n".into(),
        };
        assert_eq!(source.line_col(0), (1, 1));
        assert_eq!(source.line_col(3), (2, 1));
        assert_eq!(source.line_col(5), (2, 2));
    }
}
