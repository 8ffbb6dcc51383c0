//! How an error is said: what failed, then each cause once, joined by
//! `": "`. This crate's errors say only what failed in their `Display` and
//! give the cause as `source()`, so a log line, a run document, a dead
//! letter's reason and the CLI all say the chain through [`Chain`]. Some
//! errors of other crates repeat their cause's text; a cause already said
//! is left out.

use std::error::Error;
use std::fmt;

/// An error and its causes, each said once.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut said = String::new();
        let mut next = Some(self.0);
        while let Some(err) = next {
            let part = err.to_string();
            if !said.contains(&part) {
                if !said.is_empty() {
                    said.push_str(": ");
                }
                said.push_str(&part);
            }
            next = err.source();
        }
        f.write_str(&said)
    }
}

/// [`Chain`] as a string, for a run document or a summary.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    Chain(err).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to write export file in /out")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("list_indexes: failed: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_after_what_failed() {
        let err = Outer(std::io::Error::other("No space left on device"));
        assert_eq!(
            chain(&err),
            "failed to write export file in /out: No space left on device"
        );
    }

    #[test]
    fn a_cause_the_message_already_holds_is_said_once() {
        let io = std::io::Error::other("connection refused");
        let err = anyhow::Error::new(Repeats(io)).context("Failed to read the status");
        assert_eq!(
            chain(err.as_ref()),
            "Failed to read the status: list_indexes: failed: connection refused"
        );
    }
}
