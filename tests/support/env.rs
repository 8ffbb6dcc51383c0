//! The environments the tests and benchmarks give the daemons and
//! commands they start: fixed tunings are written as a shell writes an
//! environment, `KEY=value` words.

#![allow(dead_code)] // each test binary uses its own part

/// The `KEY=value` words of `text`, as pairs.
pub fn env_line(text: &str) -> Vec<(String, String)> {
    text.split_whitespace()
        .map(|word| {
            let (key, value) = word.split_once('=').expect("KEY=value");
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

/// `&[(&str, &str)]` view of an owned environment.
pub fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// What every daemon a test starts shares: its queue and connection
/// names, quick reconnects and retries, no schedule or watchdog, a port
/// of its own and JSON logs.
pub fn daemon_env(name: &str, queue: &str) -> Vec<(String, String)> {
    let mut env = env_line(
        "ESR_AMQP__RETRY_DELAY_MS=300 ESR_AMQP__RECONNECT_MIN_DELAY_MS=50 \
         ESR_AMQP__RECONNECT_MAX_DELAY_MS=1000 ESR_RETRY__MIN_DELAY_MS=5 \
         ESR_SCHEDULE__ENABLED=false ESR_WATCHDOG__ENABLED=false \
         ESR_HTTP__LISTEN=127.0.0.1:0 ESR_LOG__FORMAT=json",
    );
    env.push(("ESR_AMQP__QUEUE".to_owned(), queue.to_owned()));
    env.push(("ESR_AMQP__CONNECTION_NAME".to_owned(), name.to_owned()));
    env
}

/// A bucket destination on an S3-compatible server at `endpoint` (plain
/// HTTP), with the credentials moto accepts.
pub fn s3_env(destination: &str, endpoint: &str, secret: &str) -> Vec<(String, String)> {
    let mut env = env_line("AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=test AWS_REGION=us-east-1");
    env.push(("ESR_EXPORT__DESTINATION".to_owned(), destination.to_owned()));
    env.push(("AWS_ENDPOINT_URL".to_owned(), endpoint.to_owned()));
    env.push(("AWS_SECRET_ACCESS_KEY".to_owned(), secret.to_owned()));
    env
}
