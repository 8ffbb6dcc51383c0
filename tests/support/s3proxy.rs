//! An HTTP proxy in front of an S3-compatible server that fails the way a
//! real store and a real network do, on the requests a test names:
//!
//! - hold before: the request is never forwarded and never answered (a
//!   black hole, or a process to kill while it waits);
//! - hold after: the request is forwarded and applied, and its answer is
//!   never delivered (a lost reply);
//! - respond: an error answer instead of forwarding (503 SlowDown, 403);
//! - strip a header: the request is forwarded without it (a store that
//!   ignores `If-None-Match`);
//! - throttle: the answer's body is delivered at a given rate (a slow
//!   link).
//!
//! Each rule fires a number of times (or always); `matched` counts the
//! requests a rule caught, so a test can wait for the moment it names.

#![allow(dead_code)] // each test binary uses its own part

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What a rule does to the requests it matches.
#[derive(Debug, Clone)]
pub enum Action {
    HoldBefore,
    HoldAfter,
    Respond(u16, &'static str),
    StripHeader(&'static str),
    /// Forwards the request after this long (another writer may act
    /// meanwhile).
    Delay(std::time::Duration),
    /// Delivers the answer's body at this many bytes a second.
    Throttle(u64),
}

/// Which requests a rule matches: method, a path suffix, a query part.
#[derive(Debug, Clone)]
pub struct Rule {
    pub method: &'static str,
    pub path_ends_with: String,
    pub query_contains: &'static str,
    pub action: Action,
    /// How many matching requests it catches (`usize::MAX`: all).
    pub times: usize,
    matched: Arc<AtomicUsize>,
}

impl Rule {
    pub fn new(method: &'static str, path_ends_with: &str, action: Action) -> Self {
        Self {
            method,
            path_ends_with: path_ends_with.to_owned(),
            query_contains: "",
            action,
            times: usize::MAX,
            matched: Arc::default(),
        }
    }

    pub fn times(mut self, times: usize) -> Self {
        self.times = times;
        self
    }

    pub fn query(mut self, contains: &'static str) -> Self {
        self.query_contains = contains;
        self
    }

    /// Requests this rule caught so far.
    pub fn matched(&self) -> usize {
        self.matched.load(Ordering::SeqCst)
    }

    fn catches(&self, req: &Request<Incoming>) -> bool {
        let uri = req.uri();
        let method_ok = self.method.is_empty() || req.method().as_str() == self.method;
        let query = uri.query().unwrap_or("");
        method_ok
            && uri.path().ends_with(&self.path_ends_with)
            && query.contains(self.query_contains)
            && self.matched.fetch_add(1, Ordering::SeqCst) < self.times
    }
}

type Rules = Arc<Mutex<Vec<Rule>>>;

/// A running proxy; its address goes into `AWS_ENDPOINT_URL`.
pub struct S3Proxy {
    pub addr: SocketAddr,
    rules: Rules,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for S3Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl S3Proxy {
    /// A proxy to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let rules: Rules = Arc::default();
        let task = tokio::spawn(serve(listener, upstream.to_owned(), rules.clone()));
        Self { addr, rules, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a rule; the returned copy shares its match counter.
    pub fn add(&self, rule: Rule) -> Rule {
        self.rules.lock().unwrap().push(rule.clone());
        rule
    }
}

async fn serve(listener: TcpListener, upstream: String, rules: Rules) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (client, upstream, rules) = (client.clone(), upstream.clone(), rules.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                handle(req, client.clone(), upstream.clone(), rules.clone())
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type UpstreamClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn handle(
    req: Request<Incoming>,
    client: UpstreamClient,
    upstream: String,
    rules: Rules,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let action = {
        let rules = rules.lock().unwrap();
        rules
            .iter()
            .find(|rule| rule.catches(&req))
            .map(|r| r.action.clone())
    };
    if let Some(Action::Throttle(rate)) = action {
        let response = forward(req, &client, &upstream, None).await;
        return Ok(throttled(response, rate));
    }
    let response = act(req, action, &client, &upstream).await;
    Ok(response.map_or_else(|never| match never {}, |r| r.map(BodyExt::boxed)))
}

/// The answer with its body delivered at `rate` bytes a second, in
/// tenths of a second.
fn throttled(response: Response<Full<Bytes>>, rate: u64) -> Response<BoxBody<Bytes, Infallible>> {
    let (parts, body) = response.into_parts();
    let chunk = (rate / 10).max(1) as usize;
    let bytes = futures_util::FutureExt::now_or_never(body.collect())
        .and_then(Result::ok)
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let chunks: Vec<Bytes> = (0..bytes.len())
        .step_by(chunk)
        .map(|at| bytes.slice(at..(at + chunk).min(bytes.len())))
        .collect();
    let paced = futures_util::stream::iter(chunks).then(|piece| async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        Ok::<_, Infallible>(hyper::body::Frame::data(piece))
    });
    Response::from_parts(parts, BodyExt::boxed(StreamBody::new(paced)))
}

async fn act(
    req: Request<Incoming>,
    action: Option<Action>,
    client: &UpstreamClient,
    upstream: &str,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (client, upstream) = (client.clone(), upstream.to_owned());
    match action {
        Some(Action::HoldBefore) => std::future::pending().await,
        Some(Action::Respond(status, code)) => Ok(error_response(status, code)),
        Some(Action::HoldAfter) => {
            let _ = forward(req, &client, &upstream, None).await;
            std::future::pending().await
        }
        Some(Action::StripHeader(name)) => Ok(forward(req, &client, &upstream, Some(name)).await),
        Some(Action::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            Ok(forward(req, &client, &upstream, None).await)
        }
        Some(Action::Throttle(_)) | None => Ok(forward(req, &client, &upstream, None).await),
    }
}

async fn forward(
    req: Request<Incoming>,
    client: &UpstreamClient,
    upstream: &str,
    strip: Option<&str>,
) -> Response<Full<Bytes>> {
    let (mut parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("{upstream}{path}").parse().expect("upstream uri");
    if let Some(name) = strip {
        parts.headers.remove(name);
    }
    let request = Request::from_parts(parts, Full::new(body));
    match client.request(request).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::from_parts(parts, Full::new(body))
        }
        Err(err) => error_response(502, Box::leak(err.to_string().into_boxed_str())),
    }
}

fn error_response(status: u16, code: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
         <Message>injected by the test proxy</Message></Error>"
    );
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/xml")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}
