//! A TCP proxy in front of MongoDB that fails the way a production network
//! and a production primary do:
//!
//! - black hole: every socket stays open and nothing is forwarded any more
//!   (a partitioned or frozen primary); new connections are accepted and
//!   held too;
//! - reset: every open connection is closed;
//! - lost reply: one request is forwarded and applied, then the server's
//!   answer is dropped and that connection closed.
//!
//! It reads the wire protocol's message framing, so a fault can fire on the
//! first request a test names (`arm`), at a moment no timer could hit.
//!
//! Started `opaque`, it carries a protocol whose bytes a test cannot read
//! (SSH, AMQP, or MongoDB where no request is named): black hole and reset
//! still apply, and it can be switched off (`set_enabled(false)`: every
//! open connection cut, new ones dropped: the service is down).

#![allow(dead_code)] // each test binary uses its own part

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bson::{Bson, Document};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const OP_MSG: i32 = 2013;
const MAX_MESSAGE: usize = 48 * 1024 * 1024;

/// One client request, as the proxy decodes it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The command name (the body's first key), e.g. `update`.
    pub command: String,
    /// The command's string argument, usually a collection name.
    pub collection: String,
    /// The body, with any document sequence (`documents`, `updates`)
    /// merged in as an array under its identifier.
    pub body: Document,
}

impl Request {
    /// True when the request is `command` on `collection` and its body
    /// mentions `text` anywhere (a field name or a value).
    pub fn is(&self, command: &str, collection: &str, text: &str) -> bool {
        self.command == command
            && self.collection == collection
            && format!("{:?}", self.body).contains(text)
    }
}

/// A fault the proxy injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward nothing from now on, holding every socket open.
    BlackHole,
    /// Forward the request, drop its reply, close the connection.
    LostReply,
    /// Close every open connection (the request is not forwarded).
    Reset,
}

type Matcher = Box<dyn Fn(&Request) -> bool + Send + Sync>;

struct Armed {
    fault: Fault,
    times: usize,
    matches: Matcher,
}

#[derive(Default)]
struct Shared {
    black_hole: bool,
    /// Switched off: connections are dropped as they come.
    refusing: bool,
    armed: Option<Armed>,
    fired: Option<(Instant, Request)>,
    fired_times: usize,
    /// Requests kept as they pass, and which.
    recording: Option<Matcher>,
    recorded: Vec<Request>,
    connections: Vec<JoinHandle<()>>,
}

type State = Arc<Mutex<Shared>>;

/// How the proxy reads what it carries.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// MongoDB wire messages, so a request can be named.
    Wire,
    /// Bytes as they come.
    Opaque,
}

/// The proxy; everything it holds closes when it is dropped.
pub struct WireProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    state: State,
    accept: JoinHandle<()>,
}

impl WireProxy {
    /// A proxy to the MongoDB server `upstream` (`host:port`), forwarding.
    pub async fn start(upstream: &str) -> Self {
        Self::started(upstream, Framing::Wire).await
    }

    /// A proxy to `upstream` that reads nothing of what it carries.
    pub async fn start_opaque(upstream: &str) -> Self {
        Self::started(upstream, Framing::Opaque).await
    }

    async fn started(upstream: &str, framing: Framing) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state: State = Arc::default();
        let upstream = upstream.to_owned();
        let accept = tokio::spawn(accept_loop(listener, upstream, framing, state.clone()));
        Self {
            addr,
            state,
            accept,
        }
    }

    /// A connection string through the proxy. `directConnection`: with
    /// replica-set discovery the driver would follow the server's own
    /// host list around the proxy.
    pub fn uri(&self) -> String {
        format!("mongodb://{}/?directConnection=true", self.addr)
    }

    /// Injects `fault` on the first request `matches` accepts from now on.
    pub fn arm(&self, fault: Fault, matches: impl Fn(&Request) -> bool + Send + Sync + 'static) {
        self.arm_times(fault, 1, matches);
    }

    /// Injects `fault` on the first `times` requests `matches` accepts
    /// (twice defeats the driver's own single retry of a write).
    pub fn arm_times(
        &self,
        fault: Fault,
        times: usize,
        matches: impl Fn(&Request) -> bool + Send + Sync + 'static,
    ) {
        self.lock().armed = Some(Armed {
            fault,
            times,
            matches: Box::new(matches),
        });
    }

    /// Black-holes at once.
    pub fn black_hole(&self) {
        let mut shared = self.lock();
        shared.black_hole = true;
        shared
            .fired
            .get_or_insert_with(|| (Instant::now(), unnamed()));
    }

    /// Ends a black hole: held connections are closed (their clients gave
    /// up on them), new ones are forwarded again.
    pub fn heal(&self) {
        self.lock().black_hole = false;
        self.reset();
    }

    /// Off: every open connection is cut and new ones are dropped. On:
    /// forwarding again.
    pub fn set_enabled(&self, on: bool) {
        self.lock().refusing = !on;
        if !on {
            self.reset();
        }
    }

    /// Closes every open connection.
    pub fn reset(&self) {
        for task in self.lock().connections.drain(..) {
            task.abort();
        }
    }

    /// When the armed fault first fired, and on which request.
    pub fn fired(&self) -> Option<(Instant, Request)> {
        self.lock().fired.clone()
    }

    /// Keeps every request `matches` accepts from now on (see
    /// [`WireProxy::recorded`]), faults or not.
    pub fn record(&self, matches: impl Fn(&Request) -> bool + Send + Sync + 'static) {
        self.lock().recording = Some(Box::new(matches));
    }

    /// The requests kept since [`WireProxy::record`], in the order they came.
    pub fn recorded(&self) -> Vec<Request> {
        self.lock().recorded.clone()
    }

    /// How many requests the armed faults hit.
    pub fn fired_times(&self) -> usize {
        self.lock().fired_times
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for WireProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset();
    }
}

fn unnamed() -> Request {
    Request {
        command: String::new(),
        collection: String::new(),
        body: Document::new(),
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, framing: Framing, state: State) {
    while let Ok((inbound, _)) = listener.accept().await {
        // Spawned and listed under the lock: the task's first look at the
        // black hole waits for it, so a heal or reset never misses it.
        let mut shared = state.lock().unwrap_or_else(|e| e.into_inner());
        if shared.refusing {
            continue; // dropped: the service is down
        }
        let task = tokio::spawn(serve(inbound, upstream.clone(), framing, state.clone()));
        shared.connections.retain(|t| !t.is_finished());
        shared.connections.push(task);
    }
}

/// One client connection: pumps both ways until either side closes or a
/// fault ends it. Held forever (until reset) once black-holed.
async fn serve(inbound: TcpStream, upstream: String, framing: Framing, state: State) {
    if is_black_hole(&state) {
        return hold(inbound).await;
    }
    let Ok(outbound) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (client_in, client_out) = inbound.into_split();
    let (server_in, server_out) = outbound.into_split();
    let lost: Arc<Mutex<Option<i32>>> = Arc::default();
    let wire = framing == Framing::Wire;
    let requests = |m: &[u8]| match wire {
        true => request_step(m, &state, &lost),
        false => Step::Forward,
    };
    let replies = |m: &[u8]| match wire {
        true => reply_step(m, &lost),
        false => Step::Forward,
    };
    tokio::select! {
        () = pump(client_in, server_out, framing, &state, requests) => {}
        () = pump(server_in, client_out, framing, &state, replies) => {}
    }
}

async fn hold(socket: TcpStream) {
    std::future::pending::<()>().await;
    drop(socket);
}

fn is_black_hole(state: &State) -> bool {
    state.lock().unwrap_or_else(|e| e.into_inner()).black_hole
}

/// What a pump does with one message.
enum Step {
    Forward,
    /// Keep the socket, forward nothing more.
    Hold,
    /// Close the connection.
    Close,
}

/// Moves whole messages (or, opaque, what comes) from `from` to `to` as
/// `decide` says, holding everything once the proxy is black-holed.
/// Returns to close the connection.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    framing: Framing,
    state: &State,
    decide: impl Fn(&[u8]) -> Step,
) {
    while let Ok(message) = read_unit(&mut from, framing).await {
        let step = match is_black_hole(state) {
            true => Step::Hold,
            false => decide(&message),
        };
        match step {
            Step::Hold => std::future::pending::<()>().await,
            Step::Close => return,
            Step::Forward if to.write_all(&message).await.is_err() => return,
            Step::Forward => {}
        }
    }
}

/// A client request: the armed fault, if it is the one it waits for.
fn request_step(message: &[u8], state: &State, lost: &Mutex<Option<i32>>) -> Step {
    match fault_for(message, state) {
        Some(Fault::BlackHole) => Step::Hold,
        Some(Fault::Reset) => {
            reset_all(state);
            Step::Close
        }
        Some(Fault::LostReply) => {
            *lost.lock().unwrap() = Some(request_id(message));
            Step::Forward
        }
        None => Step::Forward,
    }
}

/// A server reply: dropped, with its connection, when its request's
/// reply is to be lost (the request was applied, the answer never arrives).
fn reply_step(message: &[u8], lost: &Mutex<Option<i32>>) -> Step {
    match *lost.lock().unwrap() == Some(response_to(message)) {
        true => Step::Close,
        false => Step::Forward,
    }
}

fn reset_all(state: &State) {
    let tasks: Vec<_> = state.lock().unwrap().connections.drain(..).collect();
    // This connection's own task is among them: aborting it ends this call
    // at its next await, after the others are gone.
    for task in tasks {
        task.abort();
    }
}

/// The armed fault, if `message` is the request it waits for (disarming
/// it); the request kept first if it is recorded.
fn fault_for(message: &[u8], state: &State) -> Option<Fault> {
    let request = decode(message)?;
    let mut shared = state.lock().unwrap_or_else(|e| e.into_inner());
    if shared.recording.as_ref().is_some_and(|keep| keep(&request)) {
        shared.recorded.push(request.clone());
    }
    let armed = shared.armed.as_mut()?;
    if !(armed.matches)(&request) {
        return None;
    }
    let fault = armed.fault;
    armed.times -= 1;
    if armed.times == 0 {
        shared.armed = None;
    }
    shared.fired_times += 1;
    shared.fired.get_or_insert((Instant::now(), request));
    if fault == Fault::BlackHole {
        shared.black_hole = true;
    }
    Some(fault)
}

async fn read_unit(from: &mut OwnedReadHalf, framing: Framing) -> std::io::Result<Vec<u8>> {
    match framing {
        Framing::Wire => read_message(from).await,
        Framing::Opaque => read_chunk(from).await,
    }
}

/// What the socket has, up to 64 KiB; an error at its end.
async fn read_chunk(from: &mut OwnedReadHalf) -> std::io::Result<Vec<u8>> {
    let mut chunk = vec![0u8; 64 * 1024];
    match from.read(&mut chunk).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        read => {
            chunk.truncate(read);
            Ok(chunk)
        }
    }
}

async fn read_message(from: &mut OwnedReadHalf) -> std::io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    from.read_exact(&mut length).await?;
    let n = i32::from_le_bytes(length) as usize;
    if !(16..=MAX_MESSAGE).contains(&n) {
        return Err(std::io::Error::other(format!("message of {n} bytes")));
    }
    let mut message = vec![0u8; n];
    message[..4].copy_from_slice(&length);
    from.read_exact(&mut message[4..]).await?;
    Ok(message)
}

fn int_at(message: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(message[at..at + 4].try_into().unwrap())
}

fn request_id(message: &[u8]) -> i32 {
    int_at(message, 4)
}

fn response_to(message: &[u8]) -> i32 {
    int_at(message, 8)
}

/// An `OP_MSG` request: its body and document sequences.
fn decode(message: &[u8]) -> Option<Request> {
    if message.len() < 21 || int_at(message, 12) != OP_MSG {
        return None;
    }
    let checksum = int_at(message, 16) & 1 == 1;
    let end = message.len() - if checksum { 4 } else { 0 };
    let (mut at, mut body, mut sequences) = (20, None, Vec::new());
    while at < end {
        let kind = message[at];
        let size = int_at(message, at + 1) as usize;
        let section = message.get(at + 1..at + 1 + size)?;
        match kind {
            0 => body = Document::from_reader(section).ok(),
            1 => sequences.push(sequence(section)?),
            _ => return None,
        }
        at += 1 + size;
    }
    let mut body = body?;
    for (identifier, documents) in sequences {
        body.insert(identifier, Bson::Array(documents));
    }
    let command = body.keys().next()?.clone();
    let collection = body.get_str(&command).unwrap_or_default().to_owned();
    Some(Request {
        command,
        collection,
        body,
    })
}

/// A kind-1 section: its identifier and documents.
fn sequence(section: &[u8]) -> Option<(String, Vec<Bson>)> {
    let name_end = 4 + section[4..].iter().position(|b| *b == 0)?;
    let identifier = String::from_utf8(section[4..name_end].to_vec()).ok()?;
    let mut rest = &section[name_end + 1..];
    let mut documents = Vec::new();
    while rest.len() >= 5 {
        let size = int_at(rest, 0) as usize;
        documents.push(Bson::Document(
            Document::from_reader(rest.get(..size)?).ok()?,
        ));
        rest = &rest[size..];
    }
    Some((identifier, documents))
}
