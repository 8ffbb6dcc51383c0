//! The layers: defaults, then an optional file, then `ESR_*` variables.

use std::collections::HashMap;
use std::path::Path;

use config::{Config, Environment, File, FileFormat};

use super::raw::RawSettings;
use super::sources::Layers;
use super::{ConfigError, Settings, DEFAULT_TOML};

impl Settings {
    /// Loads the layers, parses and validates the result.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key that is missing, unknown, mistyped or invalid.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// Like [`Settings::load`], reading the environment from `env` when given
    /// (tests) instead of the process environment.
    ///
    /// # Errors
    /// See [`Settings::load`].
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let variables = ours(env.unwrap_or_else(|| std::env::vars().collect()));
        let read = Layers::read(file, variables.clone())?;
        let secret_files = read.secret_files()?;
        let mut builder = layers(file, variables);
        for (key, _, value) in &secret_files {
            builder = builder.set_override(*key, value.as_str())?;
        }
        let raw: RawSettings = builder.build()?.try_deserialize()?;
        let mut settings = raw.parse()?;
        let files: Vec<_> = secret_files
            .into_iter()
            .map(|(key, path, _)| (key, path))
            .collect();
        settings.sources = read.sources(&files);
        settings.validate()?;
        Ok(settings)
    }
}

/// The variables that are settings: `ESR_<SECTION>__<KEY>`. Any other
/// `ESR_*` variable is not ours and is left alone (Kubernetes, say, puts
/// `ESR_EXPORTER_SERVICE_HOST` into every pod of a Service named
/// `esr-exporter`), with a DEBUG line at most.
fn ours(env: HashMap<String, String>) -> HashMap<String, String> {
    env.into_iter()
        .filter(|(key, _)| match key.strip_prefix("ESR_") {
            Some(rest) if rest.contains("__") => true,
            Some(_) => {
                tracing::debug!(variable = %key, "ignoring an ESR_ variable that is not ESR_<SECTION>__<KEY>");
                false
            }
            None => false,
        })
        .collect()
}

fn layers(
    file: Option<&Path>,
    env: HashMap<String, String>,
) -> config::ConfigBuilder<config::builder::DefaultState> {
    let mut builder = Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
    if let Some(path) = file {
        builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
    }
    let environment = Environment::with_prefix("ESR")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("schedule.deaneries")
        .source(Some(env));
    builder.add_source(environment)
}
