use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use super::Deanery;

/// How far a command's slot may lie ahead of this replica's clock and be
/// taken as it is: the replica that fired it may run a little ahead. A slot
/// further ahead is taken only when the slot collection records it fired.
pub const SLOT_CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// A slot further ahead than this is no replica's clock error: the command
/// is forged or corrupt, and is dead-lettered.
const FORGED_SLOT_HORIZON: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// Which schedule slot a command belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The scheduled instant the command was published for.
    Scheduled(DateTime<Utc>),
    /// Published by hand (`esr-exporter trigger`) or by the watchdog.
    Manual,
}

impl Slot {
    /// Stored and sent form: RFC 3339 UTC with seconds, or `manual`.
    pub fn id(&self) -> String {
        match self {
            Self::Scheduled(at) => at.to_rfc3339_opts(SecondsFormat::Secs, true),
            Self::Manual => "manual".to_owned(),
        }
    }
}

impl Serialize for Slot {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.id())
    }
}

impl<'de> Deserialize<'de> for Slot {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "manual" {
            return Ok(Self::Manual);
        }
        DateTime::parse_from_rfc3339(&text)
            .map(|at| Self::Scheduled(at.with_timezone(&Utc)))
            .map_err(|err| {
                serde::de::Error::custom(format!(
                    "slot {text:?} is neither \"manual\" nor an RFC 3339 instant: {err}"
                ))
            })
    }
}

/// A generation command, as carried on the queue (JSON). Unknown fields
/// are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationCommand {
    /// Unique id of this command.
    pub command_id: Uuid,
    /// The deanery to export (one per command).
    pub deanery: String,
    /// The slot it belongs to.
    pub slot: Slot,
    /// Who asked: `scheduler@<host>`, `trigger@<host>`, ...
    pub requested_by: String,
    /// When it was published.
    #[serde(default)]
    pub(crate) requested_at: Option<DateTime<Utc>>,
}

/// Why a message is not a usable command. The text goes to the log and to
/// the dead-lettered message's `x-esr-dead-letter-reason` header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not JSON, or not the command's shape.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// A scheduled slot more than a day ahead: no replica's clock is that
    /// far off; exporting now would use that slot up, and the genuine
    /// command for it would be a no-op.
    #[error("invalid command {command_id}: slot {slot} is in the future (more than {allowance_s} s ahead: no clock is that far off)")]
    FutureSlot {
        /// The command's id.
        command_id: Uuid,
        /// The slot, as sent.
        slot: String,
        /// The clock-skew allowance, in seconds.
        allowance_s: i64,
    },
    /// Well-formed, but the deanery code is not valid.
    #[error("invalid command {command_id}: {reason}")]
    InvalidDeanery {
        /// The command's id.
        command_id: Uuid,
        /// Why the code is refused.
        reason: String,
    },
}

impl GenerationCommand {
    /// A new command for `deanery`.
    pub fn new(deanery: &Deanery, slot: Slot, requested_by: impl Into<String>) -> Self {
        Self {
            command_id: Uuid::new_v4(),
            deanery: deanery.to_string(),
            slot,
            requested_by: requested_by.into(),
            requested_at: Some(Utc::now()),
        }
    }

    /// Parses and validates a message body.
    ///
    /// # Errors
    /// [`CommandError`] saying what is wrong.
    pub fn parse(body: &[u8]) -> Result<(Self, Deanery), CommandError> {
        Self::parse_at(body, Utc::now())
    }

    /// Like [`GenerationCommand::parse`], with the clock passed in.
    ///
    /// # Errors
    /// [`CommandError`] saying what is wrong.
    pub(crate) fn parse_at(
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(Self, Deanery), CommandError> {
        let (command, deanery) = Self::parse_shape(body)?;
        if let Slot::Scheduled(at) = command.slot {
            if at > now + FORGED_SLOT_HORIZON {
                return Err(CommandError::FutureSlot {
                    command_id: command.command_id,
                    slot: command.slot.id(),
                    allowance_s: FORGED_SLOT_HORIZON.num_seconds(),
                });
            }
        }
        Ok((command, deanery))
    }

    fn parse_shape(body: &[u8]) -> Result<(Self, Deanery), CommandError> {
        let command: Self =
            serde_json::from_slice(body).map_err(|err| CommandError::Malformed(err.to_string()))?;
        let deanery =
            Deanery::parse(&command.deanery).map_err(|err| CommandError::InvalidDeanery {
                command_id: command.command_id,
                reason: err.to_string(),
            })?;
        Ok((command, deanery))
    }

    /// The JSON body.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a command always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_round_trips_and_ignores_unknown_fields() {
        let body = br#"{"commandId":"6f1c1d2e-8a53-4c59-9d7e-0b1f2a3c4d5e","deanery":"MER",
            "slot":"2026-11-28T13:00:00Z","requestedBy":"scheduler@a","extra":{"x":1}}"#;
        let (command, deanery) = GenerationCommand::parse(body).unwrap();
        assert_eq!(deanery.as_str(), "MER");
        assert_eq!(command.slot.id(), "2026-11-28T13:00:00Z");
        let again = GenerationCommand::parse(&command.to_json()).unwrap().0;
        assert_eq!(again, command);
    }

    #[test]
    fn a_slot_more_than_a_day_ahead_is_refused() {
        let now = DateTime::parse_from_rfc3339("2026-11-28T12:58:00Z")
            .unwrap()
            .to_utc();
        let body = |slot: &str| {
            format!(
                r#"{{"commandId":"6f1c1d2e-8a53-4c59-9d7e-0b1f2a3c4d5e","deanery":"MER","slot":"{slot}","requestedBy":"a"}}"#
            )
        };
        assert!(GenerationCommand::parse_at(body("2026-11-28T13:00:00Z").as_bytes(), now).is_ok());
        assert!(GenerationCommand::parse_at(body("2026-11-27T13:00:00Z").as_bytes(), now).is_ok());
        // Ahead of this clock, within a day: the consumer asks the slot
        // collection whether it was fired.
        assert!(GenerationCommand::parse_at(body("2026-11-29T12:00:00Z").as_bytes(), now).is_ok());
        let err =
            GenerationCommand::parse_at(body("2026-11-29T13:00:00Z").as_bytes(), now).unwrap_err();
        assert!(matches!(err, CommandError::FutureSlot { .. }), "{err}");
        assert!(err.to_string().contains("in the future"), "{err}");
    }

    #[test]
    fn manual_commands_carry_the_manual_marker() {
        let command = GenerationCommand::new(&Deanery::parse("EOE").unwrap(), Slot::Manual, "me");
        let json: serde_json::Value = serde_json::from_slice(&command.to_json()).unwrap();
        assert_eq!(json["slot"], "manual");
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        for (body, expected) in [
            (&b"not json"[..], "malformed command"),
            (br#"{"commandId":"x","deanery":"MER","slot":"manual","requestedBy":"a"}"#, "malformed command"),
            (br#"{"commandId":"6f1c1d2e-8a53-4c59-9d7e-0b1f2a3c4d5e","deanery":42,"slot":"manual","requestedBy":"a"}"#, "malformed command"),
            (br#"{"commandId":"6f1c1d2e-8a53-4c59-9d7e-0b1f2a3c4d5e","deanery":"MER","slot":"yesterday","requestedBy":"a"}"#, "RFC 3339"),
            (br#"{"commandId":"6f1c1d2e-8a53-4c59-9d7e-0b1f2a3c4d5e","deanery":"../x","slot":"manual","requestedBy":"a"}"#, "invalid deanery code"),
        ] {
            let err = GenerationCommand::parse(body).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
