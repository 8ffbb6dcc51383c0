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
        let variables = env.clone().unwrap_or_else(|| {
            std::env::vars()
                .filter(|(key, _)| key.starts_with("ESR_"))
                .collect()
        });
        let read = Layers::read(file, variables)?;
        let secret_files = read.secret_files()?;
        let mut builder = layers(file, env);
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

fn layers(
    file: Option<&Path>,
    env: Option<HashMap<String, String>>,
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
        .source(env);
    builder.add_source(environment)
}
