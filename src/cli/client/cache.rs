//! Answers kept for reuse (`credential-process`, `gcp-executable`, `--cache-dir`): private files
//! keyed by a SHA-256 of broker, role and assertion, handed out again while they have more than
//! 10 s left.

use super::{ExchangeArgs, Format};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Where answers are kept, if anywhere.
pub(super) fn cache_dir(a: &ExchangeArgs) -> Option<PathBuf> {
    if a.no_cache {
        return None;
    }
    if let Some(d) = &a.cache_dir {
        return Some(d.clone());
    }
    if !matches!(a.format, Format::CredentialProcess | Format::GcpExecutable) {
        return None;
    }
    let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(run) = var("XDG_RUNTIME_DIR").filter(|d| d.is_dir()) {
        return Some(run.join("ephemera"));
    }
    var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache"))).map(|c| c.join("ephemera").join("exchange"))
}

/// The cache key: SHA-256 over broker URL, role and assertion (never the assertion itself).
pub(super) fn cache_key(url: &str, role: &str, assertion: &str) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in ["ephemera-exchange-cache/v1", url, role, assertion] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    ephemera_providers::verify::hex(ctx.finish().as_ref())
}

/// Answers kept for reuse; every failure to read or write one is silent (the exchange still
/// happens, or its answer is still printed).
pub(super) struct Cache {
    pub(super) dir: PathBuf,
    pub(super) key: String,
}

/// The least lifetime a kept answer must have left to be handed out again.
const CACHE_MIN_LEFT: i64 = 10;

impl Cache {
    pub(super) fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.key))
    }

    /// The directory, made private if it is not (it holds credentials).
    pub(super) fn ready(&self) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            if !self.dir.is_dir() && std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).is_err() {
                return false;
            }
            match std::fs::symlink_metadata(&self.dir) {
                Ok(m) if m.is_dir() && m.permissions().mode() & 0o077 == 0 => true,
                Ok(m) if m.is_dir() => {
                    std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).is_ok()
                }
                _ => false,
            }
        }
        #[cfg(not(unix))]
        {
            false
        }
    }

    /// The kept answer with `expires_in` counted from `now`, if it has enough life left.
    pub(super) fn load(&self, now: i64) -> Option<Value> {
        if !self.ready() {
            return None;
        }
        let path = self.path();
        let entry: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        let expires_at = entry.get("expires_at")?.as_i64()?;
        if expires_at - now < CACHE_MIN_LEFT {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        let mut v = entry.get("response")?.clone();
        v.as_object_mut()?.insert("expires_in".into(), json!(expires_at - now));
        Some(v)
    }

    pub(super) fn store(&self, v: &Value, now: i64) {
        let Some(expires_in) = v.get("expires_in").and_then(Value::as_i64).filter(|e| *e > CACHE_MIN_LEFT) else {
            return;
        };
        if !self.ready() {
            return;
        }
        self.sweep(now);
        let entry = json!({"expires_at": now + expires_in, "response": v});
        let _ = write_private(&self.path(), entry.to_string().as_bytes());
    }

    /// Deletes kept answers that have ended.
    pub(super) fn sweep(&self, now: i64) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return };
        for e in rd.flatten().take(1000) {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let ended = std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v.get("expires_at").and_then(Value::as_i64))
                .is_none_or(|t| t <= now);
            if ended {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// Writes `data` to `path` readable by the owner only, through a temporary file and a rename (a
/// reader never sees half a credential).
pub(super) fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cache_keys_bind_broker_role_and_assertion() {
        let k = cache_key("https://b/v1/token", "r", "a.b.c");
        assert_eq!(k.len(), 64);
        assert!(!k.contains("a.b.c"));
        assert_eq!(k, cache_key("https://b/v1/token", "r", "a.b.c"));
        assert_ne!(k, cache_key("https://b/v1/token", "r2", "a.b.c"));
        assert_ne!(k, cache_key("https://c/v1/token", "r", "a.b.c"));
        assert_ne!(k, cache_key("https://b/v1/token", "r", "a.b.d"));
        // lengths are bound: moving a character between parts changes the key
        assert_ne!(cache_key("u", "ra", "b"), cache_key("u", "r", "ab"));
    }

    #[test]
    fn kept_answers_are_private_and_end_with_their_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache { dir: dir.path().join("cache"), key: "k".into() };
        let v = json!({"access_token": "t", "expires_in": 100});
        c.store(&v, 1000);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&c.dir), 0o700);
            assert_eq!(mode(&c.path()), 0o600);
        }
        assert_eq!(c.load(1050).unwrap()["expires_in"], 50);
        assert!(c.load(1091).is_none(), "less than 10 s left");
        assert!(!c.path().exists(), "an ended answer is deleted");
        // a short-lived answer is not kept at all
        c.store(&json!({"access_token": "t", "expires_in": 5}), 1000);
        assert!(c.load(1000).is_none());
    }
}
