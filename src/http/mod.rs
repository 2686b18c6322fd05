//! The daemon's HTTP listener: `/healthz`, `/readyz`, `/metrics`, and with `api.token` set the
//! users API ([`users`]).
//!
//! hyper over HTTP/1.1, with what a client can make it hold bounded ([`conn`]): connections,
//! the request head's size, the time to send it and to read the response. Every request is
//! counted in `usersync_http_requests_total{route,code}`; every API request is one access-log
//! line (method, route, status, duration; never the token or query values). On shutdown the
//! listener stops accepting and open connections finish their current request.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::metrics::Closed;
use crate::state::Shared;

pub mod conn;
mod ready;
pub mod status;
pub mod users;

pub use ready::{NotReady, Readiness};

type Body = Full<Bytes>;

/// Serves until shutdown, then lets open connections finish their current request.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let graceful = GracefulShutdown::new();
    let readiness = Arc::new(Readiness::default());
    let connections = Arc::new(conn::Connections::default());
    let http = shared.settings.http.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.shutdown.cancelled() => break,
        };
        let (stream, _) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(conn::SEND_BUFFER);
        let (admission, evicted) = connections.admit(http.max_connections);
        if evicted {
            shared.metrics.closed(Closed::Evicted);
        }
        let (slot, reserve) = match admission {
            conn::Admission::Full(slot) => (slot, false),
            conn::Admission::Reserve(slot) => (slot, true),
            conn::Admission::Refused => {
                shared.metrics.closed(Closed::Refused);
                continue;
            }
        };
        let slot = Arc::new(slot);
        let kill = slot.kill.clone();
        let (shared, readiness) = (shared.clone(), readiness.clone());
        let service = service_fn(move |request| {
            let (shared, readiness, slot) = (shared.clone(), readiness.clone(), slot.clone());
            async move {
                slot.busy();
                let response = observed(request, &shared, &readiness, reserve).await;
                slot.waiting();
                Ok::<_, Infallible>(response)
            }
        });
        let io = TokioIo::new(conn::DeadlineIo::new(stream, http.write_timeout));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(http.header_read_timeout)
            .max_buf_size(conn::MAX_HEAD)
            .serve_connection(io, service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                    }
                }
                _ = kill.notified() => {
                    tracing::debug!("HTTP connection closed for a newcomer: it sent no request");
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The route's name for metrics and the access log: fixed values, never a user id.
fn route_name(path: &str) -> &'static str {
    match path {
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/" => "/",
        "/status" => "/status",
        "/v1/users" | "/v1/users/" => "/v1/users",
        p if p.starts_with("/v1/users/") && p.ends_with("/explain") => "/v1/users/{id}/explain",
        p if p.starts_with("/v1/users/") => "/v1/users/{id}",
        _ => "other",
    }
}

/// Serves one request, counts it, and logs it when it is an API request.
async fn observed(
    request: Request<Incoming>,
    shared: &Shared,
    readiness: &Readiness,
    reserve: bool,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let name = route_name(request.uri().path());
    let response = if reserve && !matches!(name, "/healthz" | "/readyz" | "/metrics") {
        let mut response = json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"busy","message":"every connection is in use"}"#.into(),
        );
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        response
    } else {
        route(request, shared, readiness).await
    };
    let status = response.status();
    shared
        .metrics
        .http_requests
        .with_label_values(&[name, status.as_str()])
        .inc();
    if name.starts_with("/v1/") {
        tracing::info!(
            method = %method,
            route = name,
            status = status.as_u16(),
            duration_ms = started.elapsed().as_secs_f64() * 1e3,
            "api request"
        );
    }
    response
}

/// The route table: one arm per route.
async fn route(
    request: Request<Incoming>,
    shared: &Shared,
    readiness: &Readiness,
) -> Response<Body> {
    let uri = request.uri();
    if let Some(response) = users::route(
        request.method(),
        uri.path(),
        uri.query(),
        request.headers(),
        shared,
    )
    .await
    {
        return response;
    }
    let known = matches!(
        request.uri().path(),
        "/healthz" | "/readyz" | "/metrics" | "/" | "/status"
    );
    if known && request.method() != Method::GET && request.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"method_not_allowed"}"#.into(),
        );
    }
    match request.uri().path() {
        "/healthz" if shared.alive() => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        "/healthz" => json(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"scheduler stalled"}"#.into(),
        ),
        "/readyz" => ready::respond(shared, readiness).await,
        "/metrics" => Response::builder()
            .status(StatusCode::OK)
            .header(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(Full::new(Bytes::from(shared.metrics.render())))
            .expect("a valid response"),
        path @ ("/" | "/status") => {
            let detailed = shared
                .settings
                .api
                .token
                .as_ref()
                .is_some_and(|t| users::authorized(request.headers(), t.expose()));
            status::respond(shared, readiness, detailed, path == "/status").await
        }
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#.into()),
    }
}

pub(crate) fn json(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
