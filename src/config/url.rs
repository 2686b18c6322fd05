//! The database URL: its `sslmode` (which tokio-postgres cannot parse beyond `require`), how
//! it is shown without its password, and the type that keeps secrets out of every `Debug`.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A value that never prints: `Debug` and serialization show `***`, and only
/// [`Secret::expose`] gives it out, to the code that needs it.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

/// `sslmode`, as libpq spells it (but `allow`, which usersync does not offer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The connection string without its `sslmode`, and the `sslmode` it named, in either form
/// libpq accepts: a URL (`postgres://…?sslmode=require`) or `key=value` pairs
/// (`host=… sslmode=require`, spaces around `=` and quoted values allowed).
pub fn take_sslmode(url: &str) -> (String, Option<String>) {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // The query starts after the last '@' (a password may hold an unencoded '?').
        let from = url
            .rfind('@')
            .unwrap_or(url.find("://").map_or(0, |i| i + 3));
        let Some(q) = url[from..].find('?').map(|i| i + from) else {
            return (url.to_string(), None);
        };
        let mut mode = None;
        let kept: Vec<&str> = url[q + 1..]
            .split('&')
            .filter(|pair| match pair.split_once('=') {
                Some(("sslmode", value)) => {
                    mode = Some(value.to_string());
                    false
                }
                _ => !pair.is_empty(),
            })
            .collect();
        let rest = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        return (format!("{}{rest}", &url[..q]), mode);
    }
    let mut mode = None;
    let mut kept = String::new();
    let (pairs, parsed) = pairs(url);
    for (key, start, end, value) in pairs {
        if key == "sslmode" {
            mode = Some(value);
        } else {
            if !kept.is_empty() {
                kept.push(' ');
            }
            kept.push_str(&url[start..end]);
        }
    }
    // What is not `key = value` stays, for the parser to refuse.
    let rest = url[parsed..].trim();
    if !rest.is_empty() {
        if !kept.is_empty() {
            kept.push(' ');
        }
        kept.push_str(rest);
    }
    (kept, mode)
}

/// `key = value` pairs with where each is, and where the pairs end: libpq's rules (a value is
/// quoted with `'`, `\` escapes, or runs to the next space).
#[allow(clippy::type_complexity)]
fn pairs(text: &str) -> (Vec<(String, usize, usize, String)>, usize) {
    let bytes: Vec<char> = text.chars().collect();
    let offsets: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let at = |i: usize| offsets.get(i).copied().unwrap_or(text.len());
    let mut out = Vec::new();
    let mut parsed = 0;
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_whitespace() {
            i += 1;
        }
        let start = i;
        parsed = at(start);
        while i < bytes.len() && bytes[i] != '=' && !bytes[i].is_whitespace() {
            i += 1;
        }
        let key: String = bytes[start..i].iter().collect();
        while i < bytes.len() && bytes[i].is_whitespace() {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != '=' {
            break;
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == '\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != '\'' {
                if bytes[i] == '\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                value.push(bytes[i]);
                i += 1;
            }
            i += 1;
        } else {
            while i < bytes.len() && !bytes[i].is_whitespace() {
                if bytes[i] == '\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                value.push(bytes[i]);
                i += 1;
            }
        }
        out.push((key, at(start), at(i.min(bytes.len())), value));
        parsed = at(i.min(bytes.len()));
    }
    (out, parsed)
}

/// The connection as a URL to show: built from the parsed configuration, never by editing
/// the string it came from, the password (if any) as `***`.
pub fn render(pg: &tokio_postgres::Config, sslmode: SslMode) -> String {
    use tokio_postgres::config::Host;
    let mut url = String::from("postgres://");
    if let Some(user) = pg.get_user() {
        url.push_str(&encode(user));
        if pg.get_password().is_some() {
            url.push_str(":***");
        }
        url.push('@');
    }
    let ports = pg.get_ports();
    let mut params: Vec<(String, String)> = Vec::new();
    let mut tcp = Vec::new();
    for (i, host) in pg.get_hosts().iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        match host {
            Host::Tcp(h) if h.contains(':') => tcp.push(format!("[{h}]:{port}")),
            Host::Tcp(h) => tcp.push(format!("{}:{port}", encode(h))),
            Host::Unix(path) => {
                params.push(("host".into(), path.display().to_string()));
                params.push(("port".into(), port.to_string()));
            }
        }
    }
    url.push_str(&tcp.join(","));
    url.push('/');
    if let Some(db) = pg.get_dbname() {
        url.push_str(&encode(db));
    }
    if let Some(name) = pg.get_application_name() {
        params.push(("application_name".into(), name.to_string()));
    }
    if let Some(options) = pg.get_options() {
        params.push(("options".into(), options.to_string()));
    }
    if let Some(timeout) = pg.get_connect_timeout() {
        params.push(("connect_timeout".into(), timeout.as_secs().to_string()));
    }
    params.push(("sslmode".into(), sslmode.as_str().into()));
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    format!("{url}?{}", query.join("&"))
}

/// Percent-encoding of everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn sslmode_is_taken_from_either_form_and_the_rest_kept() {
        assert_eq!(
            take_sslmode("postgres://u:p?w@h:5/db?application_name=x&sslmode=verify-full"),
            (
                "postgres://u:p?w@h:5/db?application_name=x".to_string(),
                Some("verify-full".to_string())
            )
        );
        assert_eq!(
            take_sslmode("postgres://u@h/db?sslmode=require"),
            ("postgres://u@h/db".to_string(), Some("require".to_string()))
        );
        assert_eq!(
            take_sslmode("postgres://u@h/db"),
            ("postgres://u@h/db".to_string(), None)
        );
        assert_eq!(take_sslmode("mysql://x").0, "mysql://x");
        assert_eq!(
            take_sslmode("host=h password = 'a \\' sslmode=x' sslmode = verify-ca user=u"),
            (
                "host=h password = 'a \\' sslmode=x' user=u".to_string(),
                Some("verify-ca".to_string())
            )
        );
    }

    #[test]
    fn the_shown_url_has_no_password_whatever_it_holds() {
        let pg = tokio_postgres::Config::from_str(
            "postgres://app:s3%2Fcr%3Ft%40@db.example:6543/post%20gres?application_name=a%26b",
        )
        .unwrap();
        assert_eq!(
            render(&pg, SslMode::Require),
            "postgres://app:***@db.example:6543/post%20gres?application_name=a%26b&sslmode=require"
        );
        let pg = tokio_postgres::Config::from_str("host=/run/pg user=u password='x y'").unwrap();
        let shown = render(&pg, SslMode::Disable);
        assert!(
            !shown.contains("x y") && !shown.contains("x%20y"),
            "{shown}"
        );
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "***");
    }
}
