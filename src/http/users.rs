//! `GET /v1/users` and `GET /v1/users/{id}`: users joined with their profiles, behind a bearer
//! token. The response shape is the contract in `users-v1.schema.json`; errors are
//! `{"error": code, "message": …}` with stable codes.

use std::time::Duration;

use hyper::{HeaderMap, Method, Response, StatusCode, header};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{Body, json};
use crate::db::users::{self, DEFAULT_LIMIT, MAX_LIMIT, Query};
use crate::error::DbContext;
use crate::state::Shared;

/// The pinned JSON Schema of the responses.
pub const SCHEMA: &str = include_str!("users-v1.schema.json");

/// Serves `path` when it is a users route and the API is on (a token is configured).
pub async fn route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    shared: &Shared,
) -> Option<Response<Body>> {
    let rest = path.strip_prefix("/v1/users")?;
    let token = shared.settings.api.token.as_ref()?.expose();
    if !authorized(headers, token) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(r#"Bearer realm="usersync""#),
        );
        return Some(response);
    }
    if method != Method::GET {
        return Some(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET",
        ));
    }
    Some(match rest {
        "" | "/" => list(query, shared).await,
        _ => {
            let rest = rest.strip_prefix('/').unwrap_or(rest);
            let (id, explained) = match rest.strip_suffix("/explain") {
                Some(id) => (id, true),
                None => (rest, false),
            };
            match Uuid::parse_str(id) {
                Ok(id) if explained => explain(id, shared).await,
                Ok(id) => one(id, shared).await,
                Err(_) => error(
                    StatusCode::BAD_REQUEST,
                    "bad_id",
                    "the user id is not a UUID",
                ),
            }
        }
    })
}

/// `Authorization: Bearer <token>` (the scheme in any case, as RFC 7235 says), the token
/// compared in constant time.
pub(crate) fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, given)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && bool::from(given.trim().as_bytes().ct_eq(token.as_bytes()))
}

async fn list(query: Option<&str>, shared: &Shared) -> Response<Body> {
    let query = match parse(query.unwrap_or("")) {
        Ok(q) => q,
        Err((code, message)) => return error(StatusCode::BAD_REQUEST, code, &message),
    };
    match bounded(shared, async |tx| users::list(tx, &query).await).await {
        Ok(page) => json(
            StatusCode::OK,
            serde_json::to_string(&page).expect("a page serializes"),
        ),
        Err(response) => response,
    }
}

async fn one(id: Uuid, shared: &Shared) -> Response<Body> {
    match bounded(shared, async |tx| users::get(tx, id).await).await {
        Ok(Some(user)) => json(
            StatusCode::OK,
            serde_json::to_string(&user).expect("a user serializes"),
        ),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such user"),
        Err(response) => response,
    }
}

/// `GET /v1/users/{id}/explain`: what `usersync explain` says, as JSON.
async fn explain(id: Uuid, shared: &Shared) -> Response<Body> {
    use crate::sync::explain::{self, Key};
    let configured = shared.settings.sync.policy();
    let explained = bounded(shared, async |tx| {
        let policy = crate::sync::policy::load_in(tx)
            .await?
            .unwrap_or(configured);
        explain::explain(tx, &Key::Id(id), policy).await
    })
    .await;
    match explained {
        Ok(Some(e)) => json(
            StatusCode::OK,
            serde_json::to_string(&e).expect("an explanation serializes"),
        ),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such user"),
        Err(response) => response,
    }
}

/// Runs one API query within the API's share of the pool (`api.max_db_connections`) and its
/// time (`api.timeout_secs`, waiting for a connection included), in a read-only transaction
/// whose statement and lock timeouts end it on the server too. However many clients call and
/// whatever holds a lock, the jobs and readiness keep their connections and the caller gets
/// an answer in time.
async fn bounded<T>(
    shared: &Shared,
    query: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> crate::Result<T>,
) -> Result<T, Response<Body>> {
    let limit = shared.settings.api.timeout;
    let started = std::time::Instant::now();
    let work = async {
        let _permit = shared.api_permits.acquire().await.map_err(|_| busy())?;
        let mut client = shared
            .db
            .get_within(limit.saturating_sub(started.elapsed()))
            .await
            .map_err(|e| failure(shared, &e))?;
        let result = async {
            let tx = client
                .transaction()
                .await
                .context("starting an API query")?;
            let left = format!(
                "{}ms",
                limit.saturating_sub(started.elapsed()).as_millis().max(1)
            );
            tx.execute(
                "SELECT pg_catalog.set_config('statement_timeout', $1, true),
                        pg_catalog.set_config('lock_timeout', $1, true),
                        pg_catalog.set_config('transaction_read_only', 'on', true)",
                &[&left],
            )
            .await
            .context("starting an API query")?;
            let value = query(&tx).await?;
            tx.commit().await.context("ending an API query")?;
            Ok::<_, crate::Error>(value)
        }
        .await;
        result.map_err(|e| failure(shared, &e))
    };
    // The server-side timeouts end the query; this one covers a server that does not answer.
    match tokio::time::timeout(limit + Duration::from_secs(1), work).await {
        Ok(result) => result,
        Err(_) => Err(busy()),
    }
}

fn failure(shared: &Shared, e: &crate::Error) -> Response<Body> {
    if e.is_unreachable() {
        tracing::warn!(error = %crate::error::Chain(e), "users API: database unreachable");
        shared.database_down();
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database cannot be reached",
        )
    } else {
        tracing::warn!(error = %crate::error::Chain(e), "users API: query did not complete");
        busy()
    }
}

fn busy() -> Response<Body> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "database_busy",
        "the database did not answer within the API's time limit",
    )
}

pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        serde_json::json!({ "error": code, "message": message }).to_string(),
    )
}

type Invalid = (&'static str, String);

/// The query string: `limit` 1-1000 (default 50), `cursor`, `missing_profile` and
/// `include_deleted` true|false. Anything else, or a parameter given twice, is a 400.
fn parse(query: &str) -> Result<Query, Invalid> {
    let mut parsed = Query {
        limit: DEFAULT_LIMIT,
        after: None,
        missing_profile: false,
        include_deleted: false,
    };
    let mut seen: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key).ok_or((
            "bad_parameter",
            "a parameter is not valid percent-encoding".to_string(),
        ))?;
        let value = decode(value).ok_or((
            "bad_parameter",
            format!("{key}: not valid percent-encoding"),
        ))?;
        if seen.contains(&key) {
            return Err(("bad_parameter", format!("{key} is given twice")));
        }
        match key.as_str() {
            "limit" => {
                parsed.limit = value
                    .parse::<i64>()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or((
                        "bad_limit",
                        format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                    ))?;
            }
            "cursor" => {
                parsed.after = Some(users::decode_cursor(&value).ok_or((
                    "bad_cursor",
                    "cursor is not one this API returned".to_string(),
                ))?);
            }
            "missing_profile" => parsed.missing_profile = boolean(&key, &value)?,
            "include_deleted" => parsed.include_deleted = boolean(&key, &value)?,
            _ => return Err(("bad_parameter", format!("unknown parameter {key:?}"))),
        }
        seen.push(key);
    }
    Ok(parsed)
}

fn boolean(key: &str, value: &str) -> Result<bool, Invalid> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(("bad_parameter", format!("{key} must be true or false"))),
    }
}

/// Percent-decoding of a query component (`+` is a space); None when it is not valid UTF-8.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_parse_or_fail_with_a_stable_code() {
        let q = parse("limit=10&missing_profile=true").unwrap();
        assert_eq!(
            (q.limit, q.missing_profile, q.include_deleted),
            (10, true, false)
        );
        assert_eq!(parse("").unwrap().limit, DEFAULT_LIMIT);
        for (query, code) in [
            ("limit=0", "bad_limit"),
            ("limit=1001", "bad_limit"),
            ("limit=ten", "bad_limit"),
            ("cursor=nope", "bad_cursor"),
            ("missing_profile=yes", "bad_parameter"),
            ("limit=1&limit=2", "bad_parameter"),
            ("order=email", "bad_parameter"),
            ("limit=%zz", "bad_parameter"),
        ] {
            assert_eq!(parse(query).unwrap_err().0, code, "{query}");
        }
    }

    #[test]
    fn the_token_must_match_exactly() {
        let mut headers = HeaderMap::new();
        assert!(!authorized(&headers, "a-long-enough-token"));
        headers.insert(
            header::AUTHORIZATION,
            "Bearer a-long-enough-token".parse().unwrap(),
        );
        assert!(authorized(&headers, "a-long-enough-token"));
        assert!(!authorized(&headers, "a-long-enough-token2"));
        headers.insert(
            header::AUTHORIZATION,
            "Basic a-long-enough-token".parse().unwrap(),
        );
        assert!(!authorized(&headers, "a-long-enough-token"));
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            headers.insert(
                header::AUTHORIZATION,
                format!("{scheme} a-long-enough-token").parse().unwrap(),
            );
            assert!(authorized(&headers, "a-long-enough-token"), "{scheme}");
        }
    }
}
