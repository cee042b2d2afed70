//! Slack notices for a pipeline: a message posted to a channel's incoming
//! webhook under a key, only when the message for that key changes.
//!
//! The webhook URL is the channel's credential: it is a [`Secret`], kept out
//! of cache keys, logs and errors (registered with the job scrubber). Posts
//! are cached operations (`slack-post`) at [`Level::AboveAverage`], each a
//! job with a log and a history row; only a `200` answer counts as posted.
//!
//! ```no_run
//! use deployer_core::{Config, Context, Current, Engine, Secret};
//! use deployer_slack::Slack;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let ctx = Context::open("/var/lib/deployer".as_ref(), Config::default())?;
//! let url = Secret::new(std::fs::read_to_string("/run/secrets/slack")?.trim().to_owned());
//! let slack = Slack::new(&ctx, "deploys", url)?;
//! let text = Current::from("Deploy 4f2a9c1 as www: ok".to_owned());
//! let notice = slack.post("notify www", "deploy-www", &text);
//! Engine::new(notice).run().await;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deployer_core::cache::{OutputCache, Publisher};
use deployer_core::{Context, Current, Error, Job, Level, Secret};
use serde::{Deserialize, Serialize};

/// A Slack channel, reached through its incoming webhook.
#[derive(Clone)]
pub struct Slack {
    cache: OutputCache<Posts>,
    channel: String,
}

/// What a post is stored under: the channel's name and the user's key
/// (never the webhook URL).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostKey {
    /// The channel's name, as given to [`Slack::new`].
    pub channel: String,
    /// The key: one message is kept per key (`deploy-www`).
    pub key: String,
}

struct Posts {
    url: Secret<String>,
    http: reqwest::Client,
}

impl Slack {
    /// The channel `name` (a label for the UI and the store) whose incoming
    /// webhook is `url`. The URL must be `https://`, or `http://` on
    /// loopback (a test server); anything else is refused here, without
    /// quoting it.
    pub fn new(ctx: &Context, name: &str, url: Secret<String>) -> Result<Slack, Error> {
        check_url(url.expose())?;
        ctx.jobs.register_secret(url.expose());
        let http = client()?;
        let cache = OutputCache::new(ctx, Posts { url, http: http.clone() });
        Ok(Slack { cache, channel: name.to_owned() })
    }

    /// The stage `label`: posts `message` under `key` each time it changes
    /// (a restart with the same message posts nothing).
    pub fn post(&self, label: &str, key: &str, message: &Current<String>) -> Current<()> {
        let key = PostKey { channel: self.channel.clone(), key: key.to_owned() };
        self.cache.set(label, Current::from(key), message.clone())
    }
}

/// Checks a webhook URL, naming the problem but never the URL (it is the
/// credential).
fn check_url(url: &str) -> Result<(), Error> {
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|e| Error::msg(format!("the Slack webhook URL does not parse ({e})")))?;
    let loopback = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        other => Err(Error::msg(format!(
            "the Slack webhook URL must be https:// (it is {other}://{})",
            parsed.host_str().unwrap_or("")
        ))),
    }
}

/// An HTTPS client trusting the system's roots (aws-lc-rs, as the rest of
/// the workspace).
fn client() -> Result<reqwest::Client, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::msg(format!("Slack's TLS settings: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::msg(format!("an HTTP client for Slack: {e}")))
}

#[async_trait]
impl Publisher for Posts {
    const ID: &'static str = "slack-post";
    type Key = PostKey;
    type Value = String;
    type Outcome = ();

    fn describe(&self, key: &PostKey, message: &String) -> Option<String> {
        let first: String = message.chars().take(60).collect();
        Some(format!("post to #{} ({}): {first}", key.channel, key.key))
    }
    fn level(&self) -> Level {
        Level::AboveAverage
    }
    fn auto_cancel(&self) -> bool {
        true
    }
    fn timeout(&self) -> Option<Duration> {
        Some(Duration::from_secs(60))
    }
    async fn publish(&self, job: &Job, key: &PostKey, message: &String) -> Result<(), Error> {
        job.log(&format!("Posting to #{} under {}:\n{message}", key.channel, key.key));
        let response = self
            .http
            .post(self.url.expose().trim())
            .json(&serde_json::json!({ "text": message }))
            .send()
            .await
            // reqwest's errors quote the URL: it is the credential.
            .map_err(|e| Error::msg(format!("posting to Slack: {}", e.without_url())))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status != reqwest::StatusCode::OK {
            let said: String = body.chars().take(200).collect();
            return Err(Error::msg(format!("Slack refused the message: {status} {said}")));
        }
        job.log("Posted");
        Ok(())
    }
}

/// `text` with Slack's control characters (`&`, `<`, `>`) escaped.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A link in Slack's markup: `<url|text>`, `text` escaped.
pub fn link(url: &str, text: &str) -> String {
    format!("<{}|{}>", url.replace('|', "%7C").replace('>', "%3E"), escape(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_without_being_quoted() {
        assert!(check_url("https://hooks.slack.com/services/T0/B0/XYZ").is_ok());
        assert!(check_url("http://127.0.0.1:9/hook").is_ok());
        let e = check_url("http://hooks.slack.com/services/T0/B0/SECRETPART").unwrap_err();
        assert!(e.message().contains("must be https://") && !e.message().contains("SECRETPART"), "{}", e.message());
        let e = check_url("not a url SECRETPART").unwrap_err();
        assert!(!e.message().contains("SECRETPART"), "{}", e.message());
    }

    #[test]
    fn markup() {
        assert_eq!(escape("a < b & c > d"), "a &lt; b &amp; c &gt; d");
        assert_eq!(link("https://x/y?a=1|2", "o/n <1234>"), "<https://x/y?a=1%7C2|o/n &lt;1234&gt;>");
    }
}
