//! The incident's questions, one command each: where is this record and
//! why (`explain`), which files went out (`files`), send that file again
//! (`redeliver`), settle a file in doubt (`resolve`). They read the records and run documents through indexes;
//! only a redelivery writes (on its run document, never on a record).

pub mod commands;
pub mod explain;
pub mod files;
pub mod redeliver;
pub mod resolve;
