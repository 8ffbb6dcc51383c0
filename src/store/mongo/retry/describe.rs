//! A driver error said briefly. A server selection failure's message is
//! the driver's whole topology description (every server, its type, its
//! labels and error, in `Debug` form); an operator needs which servers
//! were tried and why each was unusable.

use mongodb::error::{Error as MongoError, ErrorKind};

/// `err` in one short sentence where the driver's own text is a dump;
/// otherwise the driver's text.
pub(crate) fn brief(err: &MongoError) -> String {
    let ErrorKind::ServerSelection { message, .. } = err.kind.as_ref() else {
        return err.to_string();
    };
    let head = message.split(" Topology:").next().unwrap_or(message).trim();
    let servers = servers_of(message);
    if servers.is_empty() {
        return head.to_owned();
    }
    format!("{head} Servers tried: {}", servers.join("; "))
}

/// `address: why` for each server of a topology description.
fn servers_of(topology: &str) -> Vec<String> {
    topology
        .split("{ Address: ")
        .skip(1)
        .map(|server| {
            let address = server.split(',').next().unwrap_or("").trim();
            let why = server
                .split_once("Error: ")
                .map(|(_, rest)| rest.split(", labels:").next().unwrap_or(rest))
                .map(|why| why.trim_start_matches("Kind: ").trim())
                .unwrap_or("no error recorded");
            format!("{address}: {why}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topology_dump_becomes_each_server_and_its_error() {
        let dump = "Server selection timeout: No available servers. Topology: { Type: \
            ReplicaSetNoPrimary, Set Name: rs0, Servers: [ { Address: 127.0.0.1:1, Type: \
            Unknown, Error: Kind: I/O error: Connection refused (os error 111), labels: \
            {\"RetryableError\"}, source: None, server response: None } ] }";
        assert_eq!(
            servers_of(dump),
            vec!["127.0.0.1:1: I/O error: Connection refused (os error 111)".to_owned()]
        );
        let err = MongoError::from(std::io::Error::other("not a selection failure"));
        assert!(brief(&err).contains("not a selection failure"));
    }
}
