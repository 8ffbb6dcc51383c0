//! The MongoDB-wire server under test: its URI, and the `host:port` a
//! proxy in front of it connects to.
#![allow(dead_code)] // each test binary uses its own part

use bson::doc;
use mongodb::Client;

/// The server under test: `ESR_TEST_MONGODB_URI`, else the local
/// SecantusDB (a one-node replica set named `secantus`).
pub fn base_uri() -> String {
    std::env::var("ESR_TEST_MONGODB_URI")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?replicaSet=secantus".to_owned())
}

/// `host:port` of the first seed of `uri`.
pub fn first_seed(uri: &str) -> String {
    let rest = uri.split("://").nth(1).unwrap_or_default();
    let hosts = rest.split(['/', '?']).next().unwrap_or_default();
    hosts.split(',').next().unwrap_or_default().to_owned()
}

/// `host:port` of the primary `client` reaches, as its `hello` names it
/// (else the first seed of [`base_uri`]).
pub async fn primary_of(client: &Client) -> mongodb::error::Result<String> {
    let hello = client
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await?;
    Ok(match hello.get_str("primary") {
        Ok(primary) => primary.to_owned(),
        Err(_) => first_seed(&base_uri()),
    })
}
