//! hyper's HTTP/1 client connection as a tower `Service`, and what hyper's
//! connection API leaves to its caller.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use http::{header, HeaderValue, Method, Request, Response, Uri};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tower_service::Service;

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
/// hyper's `send_request` future cannot be named, so it is boxed.
pub struct Http1Connection<B> {
    send: SendRequest<B>,
    /// The `Host` header of the origin the connection was made for.
    host: Option<HeaderValue>,
}

impl<B> std::fmt::Debug for Http1Connection<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Connection")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl<B> Http1Connection<B> {
    /// Wraps the sending half of a handshaken HTTP/1 connection; a request
    /// without a `Host` header gets one from its own URI.
    pub fn new(send: SendRequest<B>) -> Self {
        Http1Connection { send, host: None }
    }

    /// Wraps a connection made for `origin`, whose `Host` header (built
    /// once here) a request without one gets.
    pub(crate) fn to(send: SendRequest<B>, origin: &Uri) -> Self {
        Http1Connection {
            send,
            host: host_header(origin),
        }
    }

    /// Whether the connection can take a request now (hyper's own
    /// `poll_ready`).
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.send.poll_ready(cx)
    }

    /// Sends `req` with hyper's own future (unboxed: the one-call client's
    /// engine holds it inline).
    pub(crate) fn send(
        &mut self,
        mut req: Request<B>,
    ) -> impl Future<Output = Result<Response<Incoming>, hyper::Error>>
    where
        B: Body + 'static,
    {
        prepare_http1(&mut req, self.host.as_ref());
        self.send.send_request(req)
    }
}

impl<B> Service<Request<B>> for Http1Connection<B>
where
    B: Body + Send + 'static,
{
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Http1Connection::poll_ready(self, cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        Box::pin(self.send(req))
    }
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
