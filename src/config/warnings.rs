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
        if self.mongodb.operation_timeout_ms * 3 > self.export.lease_seconds * 2_000 {
            warnings.push(format!(
                "`mongodb.operation_timeout_ms` ({} ms) is over two thirds of \
                 `export.lease_seconds` ({} s): the lease is renewed every third of its life, so \
                 one operation waiting out the bound can outlive it and another replica takes the \
                 run over meanwhile",
                self.mongodb.operation_timeout_ms, self.export.lease_seconds
            ));
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

    #[test]
    fn a_bound_the_lease_cannot_cover_is_named() {
        let warnings = settings(&[
            ("ESR_MONGODB__OPERATION_TIMEOUT_MS", "41000"),
            ("ESR_EXPORT__LEASE_SECONDS", "60"),
        ])
        .warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("`mongodb.operation_timeout_ms` (41000 ms)"));
        let covered = settings(&[("ESR_MONGODB__OPERATION_TIMEOUT_MS", "40000")]);
        assert!(covered.warnings().is_empty());
    }
}
