//! `ssh_config` files, read the way OpenSSH reads them for the settings a
//! deployer needs: the first value found for a keyword wins, `Host` blocks
//! apply when one of their patterns (with `*`, `?` and `!`) names the
//! alias, and `Include` reads other files in place. `Match` blocks are
//! skipped; `ProxyJump` and `ProxyCommand` are refused rather than ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::SshError;
use crate::host::{home, Host, Identity};
use crate::known_hosts::HostKeyPolicy;
use crate::pattern::{wildcard, wildcard_exact};

/// Include depth at which a loop is assumed (OpenSSH's limit).
const MAX_DEPTH: usize = 16;

/// Files read for one alias at most: a file that includes itself twice
/// would otherwise be read 2^16 times before the depth limit stops it.
const MAX_FILES: usize = 256;

/// The largest configuration file read.
const MAX_SIZE: u64 = 1 << 20;

/// The text of a configuration file, refused as OpenSSH refuses it when it
/// is writable by others than its owner or owned by another user than root
/// or this one ("Bad owner or permissions"), and, here, when it is not a
/// regular file (`Include /dev/zero` would never end) or over 1 MiB.
fn read_file(path: &Path) -> Result<String, SshError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let cannot = |e: std::io::Error| SshError::Config(format!("cannot read {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(SshError::Config(format!("{} is not a regular file", path.display())));
    }
    let me = crate::host::effective_uid();
    if (meta.uid() != 0 && meta.uid() != me) || meta.mode() & 0o022 != 0 {
        return Err(SshError::Config(format!(
            "bad owner or permissions on {} (it must be owned by root or this user, and writable by no one else)",
            path.display()
        )));
    }
    let mut text = String::new();
    file.take(MAX_SIZE + 1).read_to_string(&mut text).map_err(cannot)?;
    if text.len() as u64 > MAX_SIZE {
        return Err(SshError::Config(format!("{} is larger than {MAX_SIZE} bytes", path.display())));
    }
    Ok(text)
}

/// Whether a `Host` line's patterns name `alias`, compared as typed (in
/// the same case), as OpenSSH does (`ssh -G` shows it).
fn host_matches(patterns: &[String], alias: &str) -> bool {
    let mut matched = false;
    for p in patterns {
        if let Some(negated) = p.strip_prefix('!') {
            if wildcard_exact(negated.as_bytes(), alias.as_bytes()) {
                return false;
            }
        } else if wildcard_exact(p.as_bytes(), alias.as_bytes()) {
            matched = true;
        }
    }
    matched
}

/// A line's keyword (lower case) and arguments (quotes removed).
fn split_line(line: &str) -> Option<(String, Vec<String>)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (keyword, rest) = match line.find(|c: char| c.is_whitespace() || c == '=') {
        Some(i) => (&line[..i], line[i..].trim_start_matches(|c: char| c.is_whitespace() || c == '=')),
        None => (line, ""),
    };
    let mut args = Vec::new();
    let mut current = String::new();
    let (mut quoted, mut any) = (false, false);
    for c in rest.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    args.push(std::mem::take(&mut current));
                    any = false;
                }
            }
            c => {
                current.push(c);
                any = true;
            }
        }
    }
    if any {
        args.push(current);
    }
    Some((keyword.to_ascii_lowercase(), args))
}

/// What the files say for one alias: each keyword's first value (all
/// values for `IdentityFile`).
#[derive(Default)]
struct Settings {
    first: HashMap<String, Vec<String>>,
    identity_files: Vec<String>,
    files_read: usize,
}

impl Settings {
    fn read(&mut self, path: &Path, alias: &str, applies_outside: bool, depth: usize) -> Result<(), SshError> {
        if depth > MAX_DEPTH {
            return Err(SshError::Config(format!("{}: Include nested too deeply (a loop?)", path.display())));
        }
        self.files_read += 1;
        if self.files_read > MAX_FILES {
            return Err(SshError::Config(format!(
                "{}: more than {MAX_FILES} files read through Include (a loop?)",
                path.display()
            )));
        }
        let text = read_file(path)?;
        let mut applies = applies_outside;
        for (n, line) in text.lines().enumerate() {
            let Some((keyword, args)) = split_line(line) else { continue };
            let at = || format!("{}:{}", path.display(), n + 1);
            match keyword.as_str() {
                "host" => applies = host_matches(&args, alias),
                "match" => {
                    tracing::warn!("{}: Match blocks are not supported; skipping this one", at());
                    applies = false;
                }
                "include" if applies => {
                    for pattern in &args {
                        for file in include_files(pattern, path)? {
                            self.read(&file, alias, true, depth + 1)?;
                        }
                    }
                }
                _ if !applies => {}
                "identityfile" => self.identity_files.extend(args),
                "proxyjump" | "proxycommand" if args.first().is_some_and(|a| a != "none") => {
                    return Err(SshError::Config(format!(
                        "{}: {} is not supported (reach {alias} directly, or through a tunnel)",
                        at(),
                        if keyword == "proxyjump" { "ProxyJump" } else { "ProxyCommand" }
                    )));
                }
                _ => {
                    if args.is_empty() {
                        return Err(SshError::Config(format!("{}: {keyword} needs a value", at())));
                    }
                    self.first.entry(keyword).or_insert(args);
                }
            }
        }
        Ok(())
    }

    fn get(&self, keyword: &str) -> Option<&str> {
        self.first.get(keyword).and_then(|v| v.first()).map(String::as_str)
    }
}

/// The files an `Include` argument names: `~/` expanded, a relative path
/// taken from the including file's directory, `*` and `?` in the last
/// component matched against its directory, sorted.
fn include_files(pattern: &str, from: &Path) -> Result<Vec<PathBuf>, SshError> {
    let expanded = expand_tilde(pattern);
    let path = if expanded.is_absolute() { expanded } else { from.parent().unwrap_or(Path::new("/")).join(expanded) };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !name.contains(['*', '?']) {
        return Ok(if path.exists() { vec![path] } else { vec![] });
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| wildcard(name.as_bytes(), e.file_name().to_string_lossy().as_bytes()))
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    Ok(out)
}

fn expand_tilde(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => home().unwrap_or_default().join(rest),
        None => PathBuf::from(path),
    }
}

/// `value` with its `%` tokens replaced: `%%` is `%`, each `(letter,
/// text)` of `tokens` its text, any other token an error naming `keyword`
/// and the tokens it takes, as in OpenSSH.
fn expand_tokens(keyword: &str, value: &str, tokens: &[(char, String)]) -> Result<String, SshError> {
    let known = || tokens.iter().map(|(c, _)| format!("%{c}")).chain(["%%".to_owned()]).collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(t) => match tokens.iter().find(|(c, _)| *c == t) {
                Some((_, text)) => out.push_str(text),
                None => {
                    return Err(SshError::Config(format!(
                        "{keyword} {value:?}: %{t} is not a token of {keyword} ({})",
                        known()
                    )))
                }
            },
            None => return Err(SshError::Config(format!("{keyword} {value:?}: a '%' at the end"))),
        }
    }
    Ok(out)
}

/// A path setting (`keyword`) with `%h`, `%p`, `%r`, `%u` (the login name
/// of the user running this, as OpenSSH takes it, not `$USER`), `%d`, `%%`
/// and a leading `~/` expanded.
fn expand(keyword: &str, value: &str, host: &Host) -> Result<PathBuf, SshError> {
    let tokens = [
        ('h', host.hostname.clone()),
        ('p', host.port.to_string()),
        ('r', host.user.clone()),
        ('u', crate::host::login_name()),
        ('d', home().unwrap_or_default().to_string_lossy().into_owned()),
    ];
    Ok(expand_tilde(&expand_tokens(keyword, value, &tokens)?))
}

fn seconds(keyword: &str, value: &str) -> Result<Duration, SshError> {
    value
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| SshError::Config(format!("{keyword} {value:?} is not a number of seconds")))
}

/// The host `alias` as the file at `path` describes it.
pub(crate) fn resolve(alias: &str, path: &Path) -> Result<Host, SshError> {
    let mut settings = Settings::default();
    settings.read(path, alias, true, 0)?;
    let hostname = match settings.get("hostname") {
        // HostName's tokens are %h (the alias) and %%, as in OpenSSH.
        Some(h) => expand_tokens("HostName", h, &[('h', alias.to_owned())])?,
        None => alias.to_owned(),
    };
    // A HostName is a name or an address, never `host:port`: a bare IPv6
    // address is read as one.
    let bracketed =
        if hostname.contains(':') && !hostname.starts_with('[') { format!("[{hostname}]") } else { hostname };
    let mut host = Host::new(&bracketed)?;
    host.name = alias.to_owned();
    if let Some(user) = settings.get("user") {
        host = host.user(user);
        // Checked as it is (found by the ssh_config fuzz target: checked as
        // part of `user@host`, `User ssh://10` passed as the user `10`).
        crate::host::check_word("user", user)?;
    }
    if let Some(port) = settings.get("port") {
        let port = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
            SshError::Config(format!("{}: Port {port:?} is not a port number (host {alias})", path.display()))
        })?;
        host = host.port(port);
    }
    if !settings.identity_files.is_empty() {
        let files: Vec<PathBuf> =
            settings.identity_files.iter().map(|f| expand("IdentityFile", f, &host)).collect::<Result<_, _>>()?;
        let found = files.iter().find(|f| f.exists()).ok_or_else(|| {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            SshError::Config(format!("host {alias}: none of its IdentityFile exists ({})", names.join(", ")))
        })?;
        host.identity = Identity::KeyFile { path: found.clone(), passphrase: None };
    } else {
        match settings.get("identityagent") {
            None | Some("none") => {}
            Some("SSH_AUTH_SOCK") => host.identity = Identity::Agent(None),
            Some(socket) => host.identity = Identity::Agent(Some(expand("IdentityAgent", socket, &host)?)),
        }
    }
    let known = match settings.get("userknownhostsfile") {
        Some(file) => expand("UserKnownHostsFile", file, &host)?,
        None => home().unwrap_or_default().join(".ssh").join("known_hosts"),
    };
    host.host_keys = match settings.get("stricthostkeychecking").map(str::to_ascii_lowercase).as_deref() {
        // "no" would also accept a changed key in OpenSSH; here it never does.
        Some("accept-new" | "no" | "off") => {
            // Learning into a file that forgets (OpenSSH's "none", or
            // /dev/null) would accept any key every time.
            if settings.get("userknownhostsfile").is_some_and(|f| f.eq_ignore_ascii_case("none"))
                || crate::known_hosts::forgets(&known)
            {
                return Err(SshError::Config(format!(
                    "host {alias}: StrictHostKeyChecking learns new keys but UserKnownHostsFile is {}, which keeps \
                     none, so every key would be accepted: name a real known_hosts file, or pin the key",
                    known.display()
                )));
            }
            HostKeyPolicy::LearnUnknown(known)
        }
        _ => HostKeyPolicy::KnownHosts(known),
    };
    if let Some(t) = settings.get("connecttimeout") {
        host.connect_timeout = seconds("ConnectTimeout", t)?;
    }
    if let Some(t) = settings.get("serveraliveinterval") {
        let interval = seconds("ServerAliveInterval", t)?;
        if interval > Duration::ZERO {
            host.keepalive = interval;
        }
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("deployer-ssh-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_user_is_checked_as_it_is_written() {
        let dir = tmp("user");
        let config = write(&dir, "config", "Host w\n\tUser ssh://10\n");
        let e = resolve("w", &config).expect_err("a user with '/' is refused").to_string();
        assert!(e.contains("ssh://10"), "{e}");
    }

    /// Hostile files: one that includes itself over and over, a device
    /// that never ends, a file others may write, and one too large.
    #[test]
    fn includes_that_never_end_and_files_others_may_write_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmp("hostile");
        let looping = dir.join("loop");
        std::fs::write(&looping, format!("Include {0} {0} {0}\n", looping.display())).unwrap();
        let started = std::time::Instant::now();
        let e = resolve("h", &looping).expect_err("a loop is refused").to_string();
        assert!(e.contains("more than 256 files") || e.contains("nested too deeply"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        let zero = write(&dir, "zero", "Include /dev/zero\n");
        let e = resolve("h", &zero).expect_err("a device is refused").to_string();
        assert!(e.contains("/dev/zero is not a regular file"), "{e}");
        let open = write(&dir, "open", "Host h\n\tPort 2\n");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = resolve("h", &open).expect_err("a world-writable file is refused").to_string();
        assert!(e.contains("bad owner or permissions"), "{e}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(resolve("h", &open).unwrap().port, 2);
        let big = write(&dir, "big", &"# padding\n".repeat(200_000));
        let e = resolve("h", &big).expect_err("a huge file is refused").to_string();
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn the_first_value_wins_and_host_patterns_apply() {
        let dir = tmp("first");
        let key = write(&dir, "id_deploy", "not read here");
        let config = write(
            &dir,
            "config",
            &format!(
                "# deployer hosts\n\
                 Host watch !nope\n\
                 \tHostName 127.0.0.1\n\
                 \tPort=2222\n\
                 \tUser deploy\n\
                 \tIdentityFile {dir}/missing_%h\n\
                 \tIdentityFile \"{key}\"\n\
                 \tUserKnownHostsFile {dir}/known_%r\n\
                 \tStrictHostKeyChecking accept-new\n\
                 Host *\n\
                 \tUser someone-else\n\
                 \tPort 22\n\
                 \tConnectTimeout 3\n\
                 Match host x\n\
                 \tUser matched\n",
                dir = dir.display(),
                key = key.display()
            ),
        );
        let h = resolve("watch", &config).unwrap();
        assert_eq!((h.name(), h.destination().as_str()), ("watch", "deploy@127.0.0.1:2222"));
        assert!(matches!(&h.identity, Identity::KeyFile { path, .. } if *path == key));
        assert!(matches!(&h.host_keys, HostKeyPolicy::LearnUnknown(p) if *p == dir.join("known_deploy")));
        assert_eq!(h.connect_timeout, Duration::from_secs(3));
        let other = resolve("other.example", &config).unwrap();
        assert_eq!(other.destination(), "someone-else@other.example:22");
        assert!(matches!(other.host_keys, HostKeyPolicy::KnownHosts(_)), "strict by default");
    }

    #[test]
    fn learning_into_a_file_that_forgets_is_refused() {
        let dir = tmp("devnull");
        for file in ["/dev/null", "none"] {
            for strict in ["no", "accept-new"] {
                let config = write(
                    &dir,
                    "config",
                    &format!("Host box\n\tHostName 127.0.0.1\n\tUserKnownHostsFile {file}\n\tStrictHostKeyChecking {strict}\n"),
                );
                let e = resolve("box", &config).err().unwrap_or_else(|| panic!("{file} {strict} accepted")).to_string();
                assert!(e.contains("every key would be accepted"), "{file} {strict}: {e}");
            }
        }
        // Checking against /dev/null (nothing known) is no hole: it refuses.
        let config = write(&dir, "config", "Host box\n\tUserKnownHostsFile /dev/null\n");
        assert!(matches!(resolve("box", &config).unwrap().host_keys, HostKeyPolicy::KnownHosts(_)));
    }

    /// Where this reader used to differ from OpenSSH: `Host` patterns
    /// compared in any case, `%u` from `$USER`, unknown `%` tokens kept as
    /// text, shell characters accepted in `User`. The `Host` rule is
    /// checked against the real `ssh -G` when it is installed (Debian's
    /// openssh-client: scripts/test installs it).
    #[test]
    fn host_patterns_tokens_and_users_as_openssh_reads_them() {
        let dir = tmp("openssh");
        let config = write(&dir, "config", "Host MyBox\n\tHostName 10.1.2.3\nHost *\n\tUser fallback\n");
        let typed = resolve("MyBox", &config).unwrap();
        let other_case = resolve("mybox", &config).unwrap();
        assert_eq!(typed.hostname, "10.1.2.3");
        assert_eq!(other_case.hostname, "mybox", "a pattern in another case does not match");
        if let Ok(out) = std::process::Command::new("ssh").arg("-G").arg("-F").arg(&config).arg("mybox").output() {
            if out.status.success() {
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(text.lines().any(|l| l == "hostname mybox"), "OpenSSH reads it otherwise:\n{text}");
            }
        }
        // %u is the login name of this process's user, whatever $USER says.
        let expected = crate::host::login_name();
        let config = write(&dir, "config", &format!("Host u\n\tIdentityFile {}/id_%u\n", dir.display()));
        std::fs::write(dir.join(format!("id_{expected}")), "key").unwrap();
        let h = resolve("u", &config).unwrap();
        assert!(matches!(&h.identity, Identity::KeyFile { path, .. } if path.ends_with(format!("id_{expected}"))));
        // An unknown token is an error, not text.
        let config = write(&dir, "config", "Host z\n\tIdentityFile ~/id_%Z\n");
        let e = resolve("z", &config).err().expect("%Z refused").to_string();
        assert!(e.contains("%Z is not a token"), "{e}");
        // A user with shell characters is refused.
        for user in ["a;b", "a$(id)", "a`id`", "a|b", "a'b"] {
            let config = write(&dir, "config", &format!("Host s\n\tUser {user}\n"));
            let e = resolve("s", &config).err().unwrap_or_else(|| panic!("{user} accepted")).to_string();
            assert!(e.contains("shell characters"), "{user}: {e}");
        }
    }

    #[test]
    fn include_and_refusals() {
        let dir = tmp("include");
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        write(&dir.join("conf.d"), "10-box.conf", "Host box\n  HostName 10.0.0.5\n");
        write(&dir.join("conf.d"), "20-jump.conf", "Host jumpy\n  ProxyJump bastion\n");
        let config = write(&dir, "config", "Include conf.d/*.conf\nHost box\n  HostName ignored\n");
        assert_eq!(resolve("box", &config).unwrap().hostname, "10.0.0.5");
        let e = resolve("jumpy", &config).unwrap_err().to_string();
        assert!(e.contains("ProxyJump is not supported") && e.contains("20-jump.conf:2"), "{e}");
        let missing = write(&dir, "missing", "Host m\n  IdentityFile /nonexistent/key\n");
        let e = resolve("m", &missing).unwrap_err().to_string();
        assert!(e.contains("none of its IdentityFile exists") && e.contains("/nonexistent/key"), "{e}");
        let bad = write(&dir, "bad", "Host b\n  Port ssh\n");
        assert!(resolve("b", &bad).unwrap_err().to_string().contains("not a port number"));
        let looped = write(&dir, "loop", "Include loop\n");
        assert!(resolve("x", &looped).unwrap_err().to_string().contains("nested too deeply"));
    }
}
