//! MongoDB plumbing, which knows no collection: the client's bounds,
//! concerns and TLS trust, the retry policy and the retrying transaction,
//! and streaming reads whose every batch is bounded. The files beside
//! this folder are per collection and build on it.

pub(crate) mod cursor;
pub mod retry;
mod trust;

use std::time::Duration;

use mongodb::options::{Acknowledgment, ClientOptions, ReadConcern, WriteConcern};

use crate::config::{ReadConcernLevel, Settings, WriteConcernLevel};

/// How often the driver's monitor checks the server, unless the URI says.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Bounds connecting (10 s at most) by `bound` (`mongodb.operation_timeout_ms`) and server
/// selection by its own setting, and sets the read and write concerns of
/// everything outside transactions: with `majority`, a write that decides
/// what is claimed or published cannot be rolled back by a failover, and
/// `wtimeout` bounds the wait for the majority.
pub(super) fn bound_and_concerns(
    options: &mut ClientOptions,
    settings: &Settings,
    bound: Duration,
) {
    let mongo = &settings.mongodb;
    options.server_selection_timeout =
        Some(Duration::from_millis(mongo.server_selection_timeout_ms));
    // Also the monitors' socket timeout: the driver's 10 s unless the bound
    // is shorter, so a frozen server is noticed no later than by default.
    options.connect_timeout = Some(bound.min(Duration::from_secs(10)));
    // The driver forgets a server that answered "not primary" or "shutting
    // down" until its monitor checks it again: every 10 s by default, so
    // each such error would cost up to 10 s. A URI's heartbeatFrequencyMS
    // still wins.
    options.heartbeat_freq.get_or_insert(HEARTBEAT);
    let w = match mongo.write_concern {
        WriteConcernLevel::Majority => Acknowledgment::Majority,
        WriteConcernLevel::Primary => Acknowledgment::Nodes(1),
    };
    let wtimeout = retry::server_side(bound);
    options.write_concern = Some(WriteConcern::builder().w(w).w_timeout(wtimeout).build());
    options.read_concern = Some(match mongo.read_concern {
        ReadConcernLevel::Majority => ReadConcern::majority(),
        ReadConcernLevel::Local => ReadConcern::local(),
    });
    if options.app_name.is_none() {
        options.app_name = Some("esr-exporter".to_owned());
    }
    trust::trust_like_the_broker(options);
}
