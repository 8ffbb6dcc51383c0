//! Where each setting came from (default, config file, environment, or a
//! secret file), and the `<key>_file` form of the secret-bearing keys:
//! `mongodb.uri_file` / `ESR_MONGODB__URI_FILE` and `amqp.uri_file` /
//! `ESR_AMQP__URI_FILE` name a file whose trimmed content is the value, as
//! does `sftp.private_key_passphrase_file`.
//!
//! A secret file is refused when it cannot be read or other users can
//! write it (mode `0o022`), naming the path and never the content. Giving
//! a key and its `_file` form in any layers is refused, naming both. The
//! file is read at start: a rotated secret takes effect at the next start.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{ConfigError, DEFAULT_TOML};

/// The keys that may carry a password, each with its `_file` form.
pub(crate) const SECRET_KEYS: [(&str, &str); 3] = [
    ("mongodb.uri", "mongodb.uri_file"),
    ("amqp.uri", "amqp.uri_file"),
    (
        "sftp.private_key_passphrase",
        "sftp.private_key_passphrase_file",
    ),
];

/// Where one setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `config/default.toml`.
    Default,
    /// The `--config` file.
    ConfigFile(PathBuf),
    /// An `ESR_<SECTION>__<KEY>` variable.
    Environment(String),
    /// A secret file named by a `_file` key (from the environment or the
    /// config file).
    SecretFile(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::ConfigFile(path) => write!(f, "config file {}", path.display()),
            Self::Environment(var) => write!(f, "environment {var}"),
            Self::SecretFile(path) => write!(f, "secret file {}", path.display()),
        }
    }
}

/// Every key's source, by dotted key.
pub type Sources = BTreeMap<String, Source>;

/// The environment variable of a dotted key: `ESR_MONGODB__URI`.
fn env_name(key: &str) -> String {
    format!("ESR_{}", key.replace('.', "__").to_uppercase())
}

/// The value of `section.key` in a TOML document, as a string.
fn toml_value(doc: &toml::Table, key: &str) -> Option<String> {
    let (section, name) = key.split_once('.')?;
    let value = doc.get(section)?.as_table()?.get(name)?;
    Some(
        value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned),
    )
}

/// The layers as read for provenance: the config file's table and the
/// `ESR_*` variables.
pub(super) struct Layers {
    file: Option<(PathBuf, toml::Table)>,
    env: HashMap<String, String>,
}

impl Layers {
    /// Reads the config file (if any) and takes the environment.
    ///
    /// # Errors
    /// When the config file cannot be read or parsed.
    pub(super) fn read(
        file: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let file = match file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Invalid {
                    key: "--config",
                    reason: format!("cannot read {}: {err}", path.display()),
                })?;
                let table = text
                    .parse::<toml::Table>()
                    .map_err(|err| ConfigError::Invalid {
                        key: "--config",
                        reason: format!("{} is not TOML: {err}", path.display()),
                    })?;
                Some((path.to_owned(), table))
            }
        };
        Ok(Self { file, env })
    }

    /// Where `key` was set, if anywhere but the defaults (the environment
    /// wins over the file), with the value.
    fn set(&self, key: &str) -> Option<(Source, String)> {
        let var = env_name(key);
        if let Some(value) = self.env.get(&var) {
            return Some((Source::Environment(var), value.clone()));
        }
        let (path, table) = self.file.as_ref()?;
        toml_value(table, key).map(|value| (Source::ConfigFile(path.clone()), value))
    }

    /// Every default key's source; the secret keys read from files are
    /// marked as such.
    pub(super) fn sources(&self, secret_files: &[(&str, PathBuf)]) -> Sources {
        let defaults: toml::Table = DEFAULT_TOML.parse().unwrap_or_default();
        let mut sources = Sources::new();
        for (section, keys) in &defaults {
            for key in keys.as_table().into_iter().flat_map(|t| t.keys()) {
                let dotted = format!("{section}.{key}");
                let source = self
                    .set(&dotted)
                    .map_or(Source::Default, |(source, _)| source);
                sources.insert(dotted, source);
            }
        }
        for (key, path) in secret_files {
            sources.insert((*key).to_owned(), Source::SecretFile(path.clone()));
        }
        sources
    }

    /// The secret keys given as files: `(key, path, trimmed content)`.
    ///
    /// # Errors
    /// Both forms given, or a file that cannot be read or that other users
    /// can write: [`ConfigError::Invalid`] naming the key and the path.
    pub(super) fn secret_files(&self) -> Result<Vec<(&'static str, PathBuf, String)>, ConfigError> {
        let mut found = Vec::new();
        for (key, file_key) in SECRET_KEYS {
            let Some((_, path)) = self.set(file_key) else {
                continue;
            };
            if let Some((source, _)) = self.set(key) {
                return Err(ConfigError::Invalid {
                    key: file_key,
                    reason: format!("both `{key}` ({source}) and `{file_key}` are given: use one"),
                });
            }
            let path = PathBuf::from(path);
            let value = read_secret(&path).map_err(|reason| ConfigError::Invalid {
                key: file_key,
                reason,
            })?;
            found.push((key, path, value));
        }
        Ok(found)
    }
}

/// The trimmed content of a secret file that only its owner (and its
/// group, reading) may touch. Errors name the path, never the content.
fn read_secret(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|err| format!("cannot read {shown}: {err}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "{shown} can be written by other users (mode {mode:04o}); make it 0400 or 0440"
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|err| format!("cannot read {shown}: {err}"))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("{shown} is empty"));
    }
    Ok(value.to_owned())
}

/// `check-config`'s account of the sources, as TOML comments.
pub(crate) fn render(sources: &Sources) -> String {
    let mut out = String::from("\n# Where each value came from:\n");
    for (key, source) in sources {
        out.push_str(&format!("#   {key} = {source}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(dir: &Path, mode: u32, content: &str) -> PathBuf {
        let path = dir.join("secret");
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn layers(env: &[(&str, String)]) -> Layers {
        Layers {
            file: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn a_secret_file_gives_its_trimmed_content_and_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = secret(dir.path(), 0o400, "mongodb://u:p@h/?replicaSet=rs0\n");
        let l = layers(&[("ESR_MONGODB__URI_FILE", path.display().to_string())]);
        let found = l.secret_files().unwrap();
        assert_eq!(found[0].0, "mongodb.uri");
        assert_eq!(found[0].2, "mongodb://u:p@h/?replicaSet=rs0");
        let sources = l.sources(&[("mongodb.uri", path.clone())]);
        assert_eq!(sources["mongodb.uri"], Source::SecretFile(path));
        assert_eq!(sources["amqp.uri"], Source::Default);
    }

    #[test]
    fn both_forms_unreadable_and_writable_files_are_refused_without_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = secret(dir.path(), 0o664, "amqp://u:hunter2@h");
        let both = layers(&[
            ("ESR_AMQP__URI", "amqp://x".to_owned()),
            ("ESR_AMQP__URI_FILE", path.display().to_string()),
        ]);
        let err = both.secret_files().unwrap_err().to_string();
        assert!(
            err.contains("amqp.uri") && err.contains("amqp.uri_file"),
            "{err}"
        );
        let writable = layers(&[("ESR_AMQP__URI_FILE", path.display().to_string())]);
        let err = writable.secret_files().unwrap_err().to_string();
        assert!(
            err.contains("0664") && err.contains(&path.display().to_string()),
            "{err}"
        );
        assert!(!err.contains("hunter2"));
        let missing = layers(&[("ESR_AMQP__URI_FILE", "/no/such/secret".to_owned())]);
        let err = missing.secret_files().unwrap_err().to_string();
        assert!(
            err.contains("/no/such/secret") && err.contains("amqp.uri_file"),
            "{err}"
        );
    }
}
