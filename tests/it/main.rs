//! Integration tests against a real MongoDB-wire server (SecantusDB in CI;
//! `ESR_TEST_MONGODB_URI` points elsewhere, e.g. a `mongod` replica set).

mod cli;
mod crash;
mod export;
mod faults;
mod helpers;
