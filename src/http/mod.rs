//! The daemon's HTTP listener: `/healthz`, `/readyz`, `/metrics`, and with `api.token` set the
//! users API ([`users`]).
//!
//! hyper over HTTP/1.1. A client gets 10 s to send its request head, so a slow or malformed
//! client holds only its own connection; on shutdown the listener stops accepting and open
//! connections finish their current request.

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
use tokio::sync::{Mutex, watch};

use crate::daemon::Shared;
use crate::db::verify;

pub mod users;

type Body = Full<Bytes>;

/// Serves until `stop` turns true, then lets open connections finish.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let readiness = Arc::new(Readiness::default());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        let (stream, _) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (shared, readiness) = (shared.clone(), readiness.clone());
        let service = service_fn(move |request| {
            let (shared, readiness) = (shared.clone(), readiness.clone());
            async move { Ok::<_, Infallible>(route(request, &shared, &readiness).await) }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

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
    let known = matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics");
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
        "/readyz" => match readiness.check(shared).await {
            Ok(()) => json(StatusCode::OK, r#"{"ready":true}"#.into()),
            Err(reason) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "ready": false, "reason": reason }).to_string(),
            ),
        },
        "/metrics" => Response::builder()
            .status(StatusCode::OK)
            .header(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(Full::new(Bytes::from(shared.metrics.render())))
            .expect("a valid response"),
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#.into()),
    }
}

pub(crate) fn json(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// Readiness: the database answers and `migrate verify` holds. Remembered for two seconds, so
/// probes from several kubelets or load balancers cost one check.
#[derive(Default)]
struct Readiness {
    last: Mutex<Option<(std::time::Instant, Result<(), String>)>>,
}

impl Readiness {
    async fn check(&self, shared: &Shared) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref()
            && at.elapsed() < Duration::from_secs(2)
        {
            return result.clone();
        }
        let result = match tokio::time::timeout(Duration::from_secs(3), probe(shared)).await {
            Ok(result) => result,
            Err(_) => Err("the database did not answer within 3 s".into()),
        };
        if result.is_err() && shared.metrics.database_up.get() == 1 {
            tracing::info!(reason = ?result, "not ready");
        }
        *last = Some((std::time::Instant::now(), result.clone()));
        result
    }
}

async fn probe(shared: &Shared) -> Result<(), String> {
    let client = shared.db.get().await.map_err(|e| {
        shared.database_down();
        e.to_string()
    })?;
    let report = verify::verify(&client).await.map_err(|e| e.to_string())?;
    if report.ok {
        Ok(())
    } else {
        Err(format!(
            "migrate verify fails: {}",
            report.failed_checks().join(", ")
        ))
    }
}
