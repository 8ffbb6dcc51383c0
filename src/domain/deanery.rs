use std::fmt;

/// A local office (deanery) code: 2 to 8 characters of `A-Z` and `0-9`
/// (MER, EOE, LDN, ...). Only a parsed code is ever put into a file name,
/// so a code can never carry a path separator or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Deanery(String);

/// A string that is not a deanery code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid deanery code {0:?}: expected 2 to 8 characters A-Z or 0-9")]
pub struct DeaneryError(pub String);

impl Deanery {
    /// The deaneries of `list`, each a valid code (for tests).
    #[cfg(test)]
    pub(crate) fn all(list: &[&str]) -> Vec<Deanery> {
        list.iter().map(|c| Deanery::parse(c).unwrap()).collect()
    }

    /// Validates a code.
    ///
    /// # Errors
    /// [`DeaneryError`] when the code does not match `^[A-Z0-9]{2,8}$`.
    pub fn parse(code: &str) -> Result<Self, DeaneryError> {
        let valid = (2..=8).contains(&code.len())
            && code
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if valid {
            Ok(Self(code.to_owned()))
        } else {
            Err(DeaneryError(code.to_owned()))
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Deanery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Deanery {
    type Err = DeaneryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::Deanery;

    #[test]
    fn real_codes_parse() {
        for code in ["MER", "EOE", "LDN", "OXF", "WES", "SEV", "KSS", "NE1", "AB"] {
            assert_eq!(Deanery::parse(code).unwrap().as_str(), code);
        }
    }

    #[test]
    fn codes_that_could_escape_a_file_name_are_refused() {
        for code in [
            "",
            "M",
            "mer",
            "../X",
            "A/B",
            "MER ",
            "ABCDEFGHI",
            "ME-R",
            "MÉR",
            "..",
            "A\0",
        ] {
            assert!(Deanery::parse(code).is_err(), "{code:?} should be refused");
        }
    }
}
