//! hyper's HTTP/1 client connection as a tower `Service`, and what hyper's
//! connection API leaves to its caller.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use http::{header, HeaderValue, Method, Request, Response, Uri};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tower_service::Service;

use crate::BoxError;

/// A tower `Service` over hyper's HTTP/1 client connection
/// (`hyper::client::conn::http1::SendRequest`), which does not implement
/// one itself: what a composable pool caches, and what
/// [`IdleExpiryConnection`](crate::idle_expiry::IdleExpiryConnection)
/// wraps ([`connect`](super::connect) makes both).
///
/// It does what hyper's connection API leaves to its caller, so that a
/// request built for a client (`Request::get("http://host:port/path")`)
/// goes out as an HTTP/1 server expects it: a `Host` header unless the
/// request has one (the connection's origin when [`connect`](super::connect)
/// made it, otherwise the request URI's host and port), and the URI in
/// origin-form (`/path?query`; authority-form for `CONNECT`). A request
/// already in origin-form is sent as it is. (So it does not speak to a
/// forward proxy, which needs the absolute form: use hyper's `SendRequest`
/// directly for that.)
///
/// A connection [`connect`](super::connect) made knows its origin, and
/// refuses a request with an absolute URI for another origin (scheme, host
/// or port) with [`WrongOrigin`], nothing written: a pool such as
/// hyper-util's `pool::cache` hands out whatever connection it holds, so
/// one cache shared by several origins would otherwise send a request to
/// the wrong server, with that server's `Host`.
///
/// hyper's `send_request` future cannot be named, so it is boxed.
pub struct Http1Connection<B> {
    // One pointer: the engine moves its connections (in and out of their
    // pools) by value.
    inner: Arc<Inner<B>>,
}

struct Inner<B> {
    /// hyper's `SendRequest`; `None` once the connection's task has ended
    /// (only for a connection made by [`Http1Connection::spawn`]).
    send: Mutex<Option<SendRequest<B>>>,
    /// The `Host` header of the origin the connection was made for.
    host: Option<HeaderValue>,
    /// That origin (scheme and authority), when known.
    origin: Option<Uri>,
}

/// The connection's task had ended (the server closed the connection, or
/// it failed) when a request came: nothing of the request was sent.
#[derive(Debug)]
pub(crate) struct Http1Closed;

impl std::fmt::Display for Http1Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HTTP/1 connection closed; nothing was sent")
    }
}

impl std::error::Error for Http1Closed {}

impl<B> std::fmt::Debug for Http1Connection<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Connection")
            .field("host", &self.inner.host)
            .field(
                "origin",
                &self.inner.origin.as_ref().map(|o| Origin(o).to_string()),
            )
            .finish_non_exhaustive()
    }
}

impl<B> Http1Connection<B> {
    /// Wraps the sending half of a handshaken HTTP/1 connection; a request
    /// without a `Host` header gets one from its own URI.
    pub fn new(send: SendRequest<B>) -> Self {
        Http1Connection {
            inner: Arc::new(Inner {
                send: Mutex::new(Some(send)),
                host: None,
                origin: None,
            }),
        }
    }

    /// Spawns the connection's task `conn` (hyper's `Connection`) and wraps
    /// its sending half, made for `origin` (whose `Host` header, built once
    /// here, a request without one gets).
    ///
    /// The task drops the `SendRequest` when it ends. hyper hands each
    /// request to the task through a tokio channel, whose send reserves a
    /// slot and then writes it; the task's end drains the channel once, up
    /// to a slot not written yet. A request sent at that very moment stays
    /// in the channel, answered only when the channel goes with its last
    /// `SendRequest`, which the request's own future holds (its connection,
    /// until the response body's end): it would wait for ever. Let go of by
    /// the task, the `SendRequest` takes the channel with it: such a request
    /// gets hyper's "connection closed" (cancelled: nothing was sent), and
    /// every later use [`Http1Closed`]. The task holds only a weak handle,
    /// so the connection still closes once every handle is gone.
    pub(crate) fn spawn<F>(send: SendRequest<B>, conn: F, origin: &Uri) -> Self
    where
        B: Send + 'static,
        F: Future + Send + 'static,
    {
        let inner = Arc::new(Inner {
            send: Mutex::new(Some(send)),
            host: host_header(origin),
            origin: Some(origin.clone()),
        });
        let released = Arc::downgrade(&inner);
        tokio::spawn(async move {
            // hyper's `Connection` (its end of the request channel) is
            // dropped as it completes.
            let _ = conn.await;
            if let Some(inner) = released.upgrade() {
                let send = inner.slot().take();
                drop(send);
            }
        });
        Http1Connection { inner }
    }

    /// Whether the connection's task has ended (only known for a connection
    /// made with [`spawn`](Self::spawn)).
    #[cfg(test)]
    pub(crate) fn is_released(&self) -> bool {
        self.inner.slot().is_none()
    }

    /// Whether the connection can take a request now (hyper's own
    /// `poll_ready`; [`Http1Closed`] once its task has ended).
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.inner.slot().as_mut() {
            Some(send) => send.poll_ready(cx).map_err(Into::into),
            None => Poll::Ready(Err(Box::new(Http1Closed))),
        }
    }

    /// Sends `req` with hyper's own future (unboxed: the one-call client's
    /// engine holds it inline), handed to hyper's channel under the lock
    /// (so the task's end finds it there); `None` once the connection's
    /// task has ended (nothing sent).
    pub(crate) fn send(
        &mut self,
        mut req: Request<B>,
    ) -> Option<impl Future<Output = Result<Response<Incoming>, hyper::Error>>>
    where
        B: Body + 'static,
    {
        prepare_http1(&mut req, self.inner.host.as_ref());
        self.inner
            .slot()
            .as_mut()
            .map(|send| send.send_request(req))
    }
}

impl<B> Inner<B> {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<SendRequest<B>>> {
        // Nothing panics under this lock; a poisoned one is still consistent.
        self.send.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<B> Service<Request<B>> for Http1Connection<B>
where
    B: Body + Send + 'static,
{
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Http1Connection::poll_ready(self, cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(origin) = &self.inner.origin {
            if req.uri().authority().is_some() && !same_origin(origin, req.uri()) {
                let wrong = WrongOrigin {
                    connection: origin.clone(),
                    request: req.uri().clone(),
                };
                return Box::pin(std::future::ready(Err(wrong.into())));
            }
        }
        match self.send(req) {
            Some(sent) => Box::pin(async move { sent.await.map_err(Into::into) }),
            None => Box::pin(std::future::ready(Err(Box::new(Http1Closed) as BoxError))),
        }
    }
}

/// A request was handed to a pooled connection made for another origin
/// (scheme, host or port): refused, nothing written. A pool of connections
/// (hyper-util's `pool::cache`) serves one origin; key one pool per origin
/// (hyper-util's `pool::map`), or use the one-call
/// [`client`](crate::client), which does.
pub struct WrongOrigin {
    connection: Uri,
    request: Uri,
}

impl WrongOrigin {
    /// The origin the connection was made for.
    pub fn connection(&self) -> &Uri {
        &self.connection
    }

    /// The request's URI.
    pub fn request(&self) -> &Uri {
        &self.request
    }
}

impl std::fmt::Display for WrongOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a request for {} was handed to a connection to {} (one pool per origin); nothing was written",
            Origin(&self.request),
            Origin(&self.connection)
        )
    }
}

/// The two origins, without userinfo (it may hold a password).
impl std::fmt::Debug for WrongOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrongOrigin")
            .field("connection", &Origin(&self.connection).to_string())
            .field("request", &Origin(&self.request).to_string())
            .finish()
    }
}

impl std::error::Error for WrongOrigin {}

/// `scheme://host[:port]` of a URI, for messages.
struct Origin<'a>(&'a Uri);

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uri = self.0;
        write!(f, "{}://", uri.scheme_str().unwrap_or("http"))?;
        match uri.authority() {
            // Without userinfo: it may hold a password.
            Some(a) => match a.port_u16() {
                Some(port) => write!(f, "{}:{port}", a.host()),
                None => f.write_str(a.host()),
            },
            None => f.write_str("?"),
        }
    }
}

/// Whether two absolute URIs name the same origin: scheme (`http` when
/// absent), host (ASCII case-insensitive) and port (the scheme's default
/// when absent).
fn same_origin(a: &Uri, b: &Uri) -> bool {
    fn parts(uri: &Uri) -> (&str, &str, Option<u16>) {
        let scheme = uri.scheme_str().unwrap_or("http");
        let default = match scheme {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        };
        (
            scheme,
            uri.host().unwrap_or_default(),
            uri.port_u16().or(default),
        )
    }
    let (a, b) = (parts(a), parts(b));
    a.0.eq_ignore_ascii_case(b.0) && a.1.eq_ignore_ascii_case(b.1) && a.2 == b.2
}

/// What an HTTP/1 server expects that hyper's connection API leaves to its
/// caller: a `Host` header (`host`, or else from the request's URI) and
/// origin-form (authority-form for CONNECT).
fn prepare_http1<B>(req: &mut Request<B>, host: Option<&HeaderValue>) {
    if !req.headers().contains_key(header::HOST) {
        let host = match host {
            Some(host) => Some(host.clone()),
            None => host_header(req.uri()),
        };
        if let Some(host) = host {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let form = if req.method() == Method::CONNECT {
        req.uri().authority().map(|a| Uri::from(a.clone()))
    } else {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        Some(Uri::from(path))
    };
    if let Some(form) = form {
        *req.uri_mut() = form;
    }
}

/// `host[:port]`, the port only when it is not the scheme's default.
fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let host = uri.host()?;
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    match uri.port_u16().filter(|&p| p != default) {
        Some(port) => HeaderValue::from_str(&format!("{host}:{port}")).ok(),
        None => HeaderValue::from_str(host).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;
    use std::time::Duration;

    /// When an HTTP/1 connection's task ends (here: the server closed it
    /// while it was idle), its handle lets go of hyper's `SendRequest`
    /// (and with it hyper's request channel): a request that reached the
    /// channel as its receiver was dropped is then answered, where its
    /// future, which holds the handle, used to wait for ever. Later uses
    /// fail at once, nothing sent.
    #[tokio::test]
    async fn the_end_of_an_http1_connections_task_drops_its_send_request() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (send, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Empty<Bytes>>(TokioIo::new(client))
            .await
            .unwrap();
        let origin = Uri::from_static("http://example.test/");
        let mut sender = Http1Connection::spawn(send, conn, &origin);
        std::future::poll_fn(|cx| sender.poll_ready(cx))
            .await
            .unwrap();
        drop(server);
        tokio::time::timeout(Duration::from_secs(10), async {
            while !sender.is_released() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the connection's task ended and dropped its SendRequest");
        let refused = std::future::poll_fn(|cx| sender.poll_ready(cx))
            .await
            .unwrap_err();
        assert!(refused.is::<Http1Closed>(), "{refused}");
        let req = Request::get("http://example.test/")
            .body(Empty::new())
            .unwrap();
        assert!(sender.send(req).is_none(), "nothing handed to hyper");
    }

    fn prepared(req: Request<()>, host: Option<&'static str>) -> Request<()> {
        let mut req = req;
        let host = host.map(HeaderValue::from_static);
        prepare_http1(&mut req, host.as_ref());
        req
    }

    #[test]
    fn an_absolute_request_gets_host_and_origin_form() {
        let req = prepared(
            Request::get("http://example.com:8080/a?b=c")
                .body(())
                .unwrap(),
            None,
        );
        assert_eq!(req.uri(), "/a?b=c");
        assert_eq!(req.headers()[header::HOST], "example.com:8080");
        // The scheme's default port is left out; a connection's origin wins.
        let req = prepared(
            Request::get("https://example.com:443").body(()).unwrap(),
            None,
        );
        assert_eq!(req.uri(), "/");
        assert_eq!(req.headers()[header::HOST], "example.com");
        let req = prepared(
            Request::get("http://example.com/").body(()).unwrap(),
            Some("origin.test"),
        );
        assert_eq!(req.headers()[header::HOST], "origin.test");
    }

    #[test]
    fn origins_compare_by_scheme_host_and_port() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert!(same_origin(
            &uri("http://a.test"),
            &uri("http://A.test:80/x")
        ));
        assert!(same_origin(
            &uri("https://a.test:443"),
            &uri("https://a.test/")
        ));
        assert!(same_origin(
            &uri("http://u:p@a.test:8080"),
            &uri("http://a.test:8080/")
        ));
        assert!(!same_origin(&uri("http://a.test"), &uri("https://a.test")));
        assert!(!same_origin(
            &uri("http://a.test:8080"),
            &uri("http://a.test:8081")
        ));
        assert!(!same_origin(&uri("http://a.test"), &uri("http://b.test")));
        let wrong = WrongOrigin {
            connection: uri("http://user:secret@a.test:8080"),
            request: uri("https://b.test/path"),
        };
        let text = wrong.to_string();
        assert!(
            text.contains("https://b.test") && text.contains("http://a.test:8080"),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
        let debug = format!("{wrong:?}");
        assert!(
            !debug.contains("secret") && debug.contains("a.test:8080"),
            "{debug}"
        );
    }

    #[test]
    fn a_host_header_and_origin_form_are_kept_and_connect_is_authority_form() {
        let req = prepared(
            Request::get("/x").header("host", "mine").body(()).unwrap(),
            Some("origin.test"),
        );
        assert_eq!(req.uri(), "/x");
        assert_eq!(req.headers()[header::HOST], "mine");
        let req = prepared(Request::get("/x").body(()).unwrap(), None);
        assert!(!req.headers().contains_key(header::HOST));
        let req = prepared(
            Request::connect("http://proxy.test:3128").body(()).unwrap(),
            None,
        );
        assert_eq!(req.uri(), "proxy.test:3128");
    }
}
