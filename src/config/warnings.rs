//! Settings that are valid but risky in production: said by `check-config`
//! and logged at WARN when the daemon starts.

use super::{ReadConcernLevel, Settings, WriteConcernLevel};

impl Settings {
    /// One sentence per risky setting, naming its key.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.mongodb.uri.pins_one_host() {
            warnings.push(
                "`mongodb.uri` has directConnection=true: it pins one host, so after a failover \
                 every write fails until restart; use the replica set's hosts with ?replicaSet=<name>"
                    .to_owned(),
            );
        }
        if self.mongodb.write_concern == WriteConcernLevel::Primary {
            warnings.push(
                "`mongodb.write_concern` is \"primary\" (w:1): a failover can roll back a run's \
                 progress after its file was published, and the file is then delivered twice; \
                 use \"majority\" with a replica set"
                    .to_owned(),
            );
        }
        if self.mongodb.read_concern == ReadConcernLevel::Local {
            warnings.push(
                "`mongodb.read_concern` is \"local\": decisions may be taken on writes a failover \
                 rolls back; use \"majority\" with a replica set"
                    .to_owned(),
            );
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(env: &[(&str, &str)]) -> Settings {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load_with_env(None, Some(env)).expect("valid settings")
    }

    #[test]
    fn the_defaults_are_production_shaped_and_warn_of_nothing() {
        assert!(settings(&[]).warnings().is_empty());
    }

    #[test]
    fn a_pinned_host_and_weaker_concerns_are_each_named() {
        let warnings = settings(&[
            (
                "ESR_MONGODB__URI",
                "mongodb://db:27017/?directConnection=true",
            ),
            ("ESR_MONGODB__WRITE_CONCERN", "primary"),
            ("ESR_MONGODB__READ_CONCERN", "local"),
        ])
        .warnings();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].starts_with("`mongodb.uri`"));
        assert!(warnings[1].starts_with("`mongodb.write_concern`"));
        assert!(warnings[2].starts_with("`mongodb.read_concern`"));
    }
}
