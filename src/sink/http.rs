//! The webhook sender's HTTP client: hyper's pooled client (the one reqwest wraps), keep-alive, HTTP/1.1,
//! native TLS for https receivers. Each receiver's URL is parsed once, into a [`Url`], not on every
//! request.
//!
//! Why not reqwest, as the load generator uses: per request it parses the URL again (with IDNA checks),
//! clones its client, and runs its redirect and timeout layers. From one thread, with 64 requests at once
//! to the same receiver, reqwest made 38,114 requests/s at 25.6 µs of CPU each and hyper's client 63,507 at
//! 15.5 µs (`cargo bench --bench doors -- webhooks`, its floor, 2026-12-03). Webhooks are not redirected:
//! a 3xx is the receiver's answer, as a vendor takes it.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{Client as Pool, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The bytes of a receiver's answer read, at most; beyond them the connection is dropped.
const MAX_ANSWER: usize = 64 * 1024;

const USER_AGENT: &str = "Understudy-Webhooks/1.0";

/// A receiver's URL, parsed once.
#[derive(Debug, Clone)]
pub struct Url(Result<Parsed, String>);

#[derive(Debug, Clone)]
struct Parsed {
    uri: hyper::Uri,
    /// The URL's credentials (`https://user:pass@host/…`), sent as HTTP Basic auth, as reqwest and the
    /// vendors do; they are not in `uri`.
    authorization: Option<hyper::header::HeaderValue>,
}

impl Url {
    /// `url` as hyper takes it. One that needs normalising (characters to percent-encode, a host in
    /// capitals or not ASCII, `.` segments, credentials, a port out of range) goes through the WHATWG
    /// parser first, as reqwest does. An unusable URL fails every attempt to it with its reason, as an
    /// unreachable receiver does.
    pub fn parse(url: &str) -> Self {
        Self(Self::as_it_is(url).map_or_else(|| Self::normalised(url), Ok))
    }

    /// `url` taken as it is, when nothing in it needs normalising.
    fn as_it_is(url: &str) -> Option<Parsed> {
        let plain = url.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~:/?[]!$&()*+,;=%".contains(&b));
        let dots = ["/./", "/../"].iter().any(|d| url.contains(d)) || url.ends_with("/.") || url.ends_with("/..");
        if !plain || dots {
            return None;
        }
        let uri = url.parse::<hyper::Uri>().ok()?;
        let authority = uri.authority()?;
        let after_host = authority.as_str().rsplit_once(']').map_or(authority.as_str(), |(_, rest)| rest);
        let port_ok = !after_host.contains(':') || authority.port_u16().is_some();
        let host_ok = !authority.host().is_empty() && !authority.host().bytes().any(|b| b.is_ascii_uppercase());
        let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
        (port_ok && host_ok && scheme_ok).then_some(Parsed { uri, authorization: None })
    }

    fn normalised(url: &str) -> Result<Parsed, String> {
        let mut u = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") || !u.has_host() {
            return Err(format!("{url}: not an http or https URL"));
        }
        let authorization = (!u.username().is_empty() || u.password().is_some()).then(|| {
            use base64::Engine as _;
            let pair = format!("{}:{}", percent_decoded(u.username()), percent_decoded(u.password().unwrap_or("")));
            let mut value = hyper::header::HeaderValue::try_from(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ))
            .expect("base64 is a valid header value");
            value.set_sensitive(true);
            value
        });
        let _ = u.set_username("");
        let _ = u.set_password(None);
        u.set_fragment(None);
        let uri = u.as_str().parse::<hyper::Uri>().map_err(|e| format!("{url}: {e}"))?;
        Ok(Parsed { uri, authorization })
    }

    pub fn uri(&self) -> Result<&hyper::Uri, &str> {
        self.0.as_ref().map(|p| &p.uri).map_err(String::as_str)
    }

    /// Scheme, host and port: what the receivers' concurrency limits are kept by.
    pub fn origin(&self) -> Option<String> {
        let u = &self.0.as_ref().ok()?.uri;
        let (scheme, authority) = (u.scheme_str()?, u.authority()?);
        let port = authority.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        Some(format!("{scheme}://{}:{port}", authority.host()))
    }

    fn authorization(&self) -> Option<&hyper::header::HeaderValue> {
        self.0.as_ref().ok()?.authorization.as_ref()
    }
}

/// `%XX` decoded (a URL's user name and password), bytes that are not UTF-8 replaced.
fn percent_decoded(s: &str) -> String {
    let (b, mut out, mut i) = (s.as_bytes(), Vec::with_capacity(s.len()), 0);
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One pool of kept-alive connections; cheap to clone.
#[derive(Clone)]
pub struct Client {
    pool: Pool<hyper_tls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// For a whole request, from connecting to the answer's last byte.
    timeout: Duration,
}

impl Client {
    pub fn new(max_idle_per_host: usize, timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let pool = Pool::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_max_idle_per_host(max_idle_per_host)
            .build(hyper_tls::HttpsConnector::new_with_connector(http));
        Self { pool, timeout }
    }

    /// POST `body` to `url`: the answer's status, or why there was none.
    pub async fn post(
        &self,
        url: &Url,
        content_type: &'static str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<u16, String> {
        let mut request = Self::request(hyper::Method::POST, url)?.header(hyper::header::CONTENT_TYPE, content_type);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        self.send(request, false).await.map(|(status, _)| status)
    }

    /// GET `url` (with its credentials): the answer's status and whole body (at most [`MAX_ANSWER`]
    /// bytes), or why there was none.
    pub async fn get(&self, url: &Url) -> Result<(u16, Bytes), String> {
        let request = Self::request(hyper::Method::GET, url)?;
        let request = request.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        self.send(request, true).await
    }

    /// A request to `url` with what every request carries: the user agent, `Accept`, the URL's credentials.
    fn request(method: hyper::Method, url: &Url) -> Result<hyper::http::request::Builder, String> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(url.uri()?.clone())
            .header(hyper::header::USER_AGENT, USER_AGENT)
            .header(hyper::header::ACCEPT, "*/*");
        if let Some(auth) = url.authorization() {
            request = request.header(hyper::header::AUTHORIZATION, auth);
        }
        Ok(request)
    }

    /// The answer's status, and its body read to its end, so that its connection goes back to the pool.
    /// Without `need_body` the status stands whatever becomes of the body (too long, cut, too slow: its
    /// connection is then closed), as a vendor takes a receiver's answer by its status.
    async fn send(&self, request: hyper::Request<Full<Bytes>>, need_body: bool) -> Result<(u16, Bytes), String> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.pool.request(request)).await {
            Ok(response) => response.map_err(|e| chain(&e))?,
            Err(_) => return Err(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        let status = response.status().as_u16();
        let body = tokio::time::timeout_at(deadline, Limited::new(response.into_body(), MAX_ANSWER).collect()).await;
        match body {
            Ok(Ok(body)) => Ok((status, body.to_bytes())),
            _ if !need_body => Ok((status, Bytes::new())),
            Ok(Err(e)) => Err(format!("reading the answer: {}", chain(&*e))),
            Err(_) => Err(format!("no whole answer within {} ms", self.timeout.as_millis())),
        }
    }
}

/// An error with its causes, as `a: b: c` (hyper's own message alone says little: "client error
/// (Connect)").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_parsed_once_and_its_origin_has_a_port() {
        let u = Url::parse("http://127.0.0.1:8080/twilio/status?x=1");
        assert_eq!(u.uri().unwrap().path_and_query().unwrap().as_str(), "/twilio/status?x=1");
        assert_eq!(u.origin().as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(Url::parse("https://example.com/hook").origin().as_deref(), Some("https://example.com:443"));
    }

    #[test]
    fn a_url_hyper_refuses_is_normalised_and_a_bad_one_says_why() {
        let spaced = Url::parse("http://example.com/a path");
        assert_eq!(spaced.uri().unwrap().path(), "/a%20path");
        let unicode = Url::parse("http://bücher.example/hook");
        assert_eq!(unicode.uri().unwrap().host(), Some("xn--bcher-kva.example"));
        assert!(Url::parse("not a url").uri().unwrap_err().contains("not a url"));
        assert!(Url::parse("ftp://example.com/x").uri().unwrap_err().contains("not an http or https URL"));
        assert!(Url::parse("/relative").uri().is_err());
        assert!(Url::parse("http://example.com:99999/x").uri().unwrap_err().contains("invalid port"));
        assert!(Url::parse("http://example.com:8o80/x").uri().is_err());
        assert_eq!(Url::parse("http://Example.COM/x").origin().as_deref(), Some("http://example.com:80"));
        assert_eq!(Url::parse("http://example.com/a/../b").uri().unwrap().path(), "/b");
        assert_eq!(Url::parse("http://[::1]:8080/x").origin().as_deref(), Some("http://[::1]:8080"));
    }

    #[test]
    fn a_url_s_credentials_go_as_basic_auth_not_in_the_uri() {
        let u = Url::parse("https://AC123:s%40cret@example.com/hook");
        assert_eq!(u.uri().unwrap().to_string(), "https://example.com/hook");
        // base64("AC123:s@cret")
        assert_eq!(u.authorization().unwrap(), "Basic QUMxMjM6c0BjcmV0");
        assert!(Url::parse("https://example.com/hook").authorization().is_none());
    }
}
