//! A provider's egress proxy: `providers.NAME.proxy`, or else what the environment says, read as
//! curl and reqwest read it (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, lower-case too, and
//! `NO_PROXY`). Resolved once, per provider, so the upstream client connects through what it is
//! given and matches nothing per request. A proxy is reached with HTTP CONNECT, for `https` and
//! `http` upstreams alike.

use std::fmt;

use http::{HeaderValue, Uri};
use hyper_util::client::proxy::matcher::Matcher;
use url::Url;

use super::file::Text;
use super::resolver::Resolver;

/// An HTTP proxy to tunnel through.
#[derive(Clone)]
pub struct Proxy {
    /// `http://host:port`, without the credentials.
    pub uri: Uri,
    /// `Basic …` from the URL's user and password, marked sensitive.
    pub auth: Option<HeaderValue>,
    /// Where the proxy came from: `providers.NAME.proxy` or the variable that set it.
    pub source: &'static str,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = if self.auth.is_some() {
            " (with credentials)"
        } else {
            ""
        };
        write!(f, "{} from {}{auth}", self.uri, self.source)
    }
}

const ENV_ALL: [&str; 2] = ["ALL_PROXY", "all_proxy"];
const ENV_HTTP: [&str; 2] = ["HTTP_PROXY", "http_proxy"];
const ENV_HTTPS: [&str; 2] = ["HTTPS_PROXY", "https_proxy"];
const ENV_NO: [&str; 2] = ["NO_PROXY", "no_proxy"];

impl Resolver<'_> {
    /// The proxy for `base_url`. `proxy = ""` means none, whatever the environment says.
    pub(super) fn proxy(&mut self, raw: Option<&Text>, key: &str, base_url: &Url) -> Option<Proxy> {
        let destination = Uri::try_from(base_url.as_str()).ok()?;
        let key = format!("{key}.proxy");
        if let Some(text) = raw {
            let value = self.string(text, &key)?;
            if value.is_empty() {
                return None;
            }
            let proxy = intercept(Matcher::builder().all(value.clone()).build(), &destination);
            // The value may carry a password: the message names the key, never the value.
            if proxy.is_none() {
                self.issue_at(
                    text.span().start,
                    &key,
                    "is not an HTTP proxy URL; write http://host:port (or http://user:password@host:port), or \"\" for none",
                );
            }
            return proxy.map(|(uri, auth)| Proxy {
                uri,
                auth,
                source: "the proxy key",
            });
        }
        // An empty variable is how a proxy is switched off in a shell: it is not there.
        let first = |names: [&'static str; 2]| {
            names
                .into_iter()
                .find_map(|name| {
                    let value = (self.env)(name).filter(|value| !value.trim().is_empty())?;
                    Some((name, value))
                })
                .unwrap_or(("", String::new()))
        };
        let (all_name, all) = first(ENV_ALL);
        let (http_name, http) = first(ENV_HTTP);
        let (https_name, https) = first(ENV_HTTPS);
        let (_, no) = first(ENV_NO);
        let source = match (base_url.scheme(), https.is_empty(), http.is_empty()) {
            ("https", false, _) => https_name,
            ("http", _, false) => http_name,
            _ => all_name,
        };
        if source.is_empty() {
            return None;
        }
        let named = || {
            Matcher::builder()
                .all(all.clone())
                .http(http.clone())
                .https(https.clone())
        };
        if intercept(named().build(), &destination).is_none() {
            self.warnings.push(format!(
                "{source} is set but is not an HTTP proxy URL tierwise can use (http://host:port): {provider} is reached directly",
                provider = &key[..key.len() - ".proxy".len()],
            ));
            return None;
        }
        intercept(named().no(no).build(), &destination).map(|(uri, auth)| Proxy {
            uri,
            auth,
            source,
        })
    }
}

/// The proxy the matcher gives `destination`, if it is one tierwise can tunnel through: HTTP, not
/// SOCKS or TLS to the proxy itself.
fn intercept(matcher: Matcher, destination: &Uri) -> Option<(Uri, Option<HeaderValue>)> {
    let found = matcher.intercept(destination)?;
    if found.uri().scheme_str() != Some("http") {
        return None;
    }
    let mut auth = found.basic_auth().cloned();
    if let Some(auth) = &mut auth {
        auth.set_sensitive(true);
    }
    Some((found.uri().clone(), auth))
}
