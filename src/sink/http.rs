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
pub struct Url(Result<hyper::Uri, String>);

impl Url {
    /// `url` as hyper takes it; a URL that `http::Uri` refuses (spaces, a host that is not ASCII) is
    /// normalised by the WHATWG parser first, as reqwest does. An unusable URL fails every attempt to it
    /// with its reason, as an unreachable receiver does.
    pub fn parse(url: &str) -> Self {
        let uri = url
            .parse::<hyper::Uri>()
            .ok()
            .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some());
        Self(match uri {
            Some(u) => Ok(u),
            None => match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {
                    u.as_str().parse::<hyper::Uri>().map_err(|e| format!("{url}: {e}"))
                }
                Ok(_) => Err(format!("{url}: not an http or https URL")),
                Err(e) => Err(format!("{url}: {e}")),
            },
        })
    }

    pub fn uri(&self) -> Result<&hyper::Uri, &str> {
        self.0.as_ref().map_err(String::as_str)
    }

    /// Scheme, host and port: what the receivers' concurrency limits are kept by.
    pub fn origin(&self) -> Option<String> {
        let u = self.0.as_ref().ok()?;
        let (scheme, authority) = (u.scheme_str()?, u.authority()?);
        let port = authority.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        Some(format!("{scheme}://{}:{port}", authority.host()))
    }
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
        let mut request = hyper::Request::post(url.uri()?.clone())
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(hyper::header::USER_AGENT, USER_AGENT);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        self.send(request).await.map(|(status, _)| status)
    }

    /// GET `uri`: the answer's status and body (its first [`MAX_ANSWER`] bytes), or why there was none.
    pub async fn get(&self, uri: hyper::Uri) -> Result<(u16, Bytes), String> {
        let request = hyper::Request::get(uri)
            .header(hyper::header::USER_AGENT, USER_AGENT)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        self.send(request).await
    }

    /// The answer is read to its end, so that its connection goes back to the pool.
    async fn send(&self, request: hyper::Request<Full<Bytes>>) -> Result<(u16, Bytes), String> {
        let answered = async {
            let response = self.pool.request(request).await.map_err(|e| chain(&e))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {}", chain(&*e)))?;
            Ok((status, body.to_bytes()))
        };
        match tokio::time::timeout(self.timeout, answered).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
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
    }
}
