//! The guest's settings, read from its environment (`wasi:cli/environment`).
//!
//! `wasmhttpd --env NAME=VALUE` and `wasmtime serve --env NAME=VALUE` both
//! set them, so one guest is configured the same way under either host.
//! A value that does not parse is a configuration error: every request then
//! gets a 500 and the reason is written to stderr, rather than the guest
//! silently serving with a setting the operator did not ask for.

use std::fmt;

/// `Cache-Control` sent with files; empty sends none.
pub const CACHE_CONTROL: &str = "WASMHTTPD_CACHE_CONTROL";
/// Compress compressible files on the fly (`on` / `off`).
pub const COMPRESSION: &str = "WASMHTTPD_COMPRESSION";
/// Serve `app.js.br` / `app.js.gz` for `app.js` when the client accepts them.
pub const PRECOMPRESSED: &str = "WASMHTTPD_PRECOMPRESSED";
/// Serve names that start with a dot (`.env`, `.git/`).
pub const DOTFILES: &str = "WASMHTTPD_DOTFILES";
/// List a directory that has no `index.html`.
pub const DIRECTORY_LISTING: &str = "WASMHTTPD_DIRECTORY_LISTING";

/// The default `Cache-Control`. Files keep their names across deploys, so
/// a cache must revalidate before reuse; with strong ETags that costs a
/// `304` and no body.
pub const DEFAULT_CACHE_CONTROL: &str = "no-cache";

/// What the guest was configured to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The `Cache-Control` value for files, if any.
    pub cache_control: Option<String>,
    /// Compress on the fly.
    pub compression: bool,
    /// Serve precompressed siblings.
    pub precompressed: bool,
    /// Serve dotfiles.
    pub dotfiles: bool,
    /// Generate directory listings.
    pub directory_listing: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cache_control: Some(DEFAULT_CACHE_CONTROL.to_owned()),
            compression: true,
            precompressed: true,
            dotfiles: false,
            directory_listing: false,
        }
    }
}

/// A variable whose value is not one the guest understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSetting {
    /// The variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// What was expected.
    pub expected: &'static str,
}

impl fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {}",
            self.name, self.value, self.expected
        )
    }
}

impl Settings {
    /// Settings from environment variables; unknown names are ignored
    /// (the environment may carry the host's or the operator's own).
    pub fn from_env<I>(vars: I) -> Result<Settings, InvalidSetting>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut settings = Settings::default();
        for (name, value) in vars {
            match name.as_str() {
                CACHE_CONTROL => settings.cache_control = cache_control(&value)?,
                COMPRESSION => settings.compression = switch(COMPRESSION, &value)?,
                PRECOMPRESSED => settings.precompressed = switch(PRECOMPRESSED, &value)?,
                DOTFILES => settings.dotfiles = switch(DOTFILES, &value)?,
                DIRECTORY_LISTING => {
                    settings.directory_listing = switch(DIRECTORY_LISTING, &value)?;
                }
                _ => {}
            }
        }
        Ok(settings)
    }
}

fn switch(name: &'static str, value: &str) -> Result<bool, InvalidSetting> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(InvalidSetting {
            name,
            value: value.to_owned(),
            expected: "on or off",
        }),
    }
}

/// A header value must be visible ASCII and spaces (RFC 9110 §5.5); an
/// empty value turns the header off.
fn cache_control(value: &str) -> Result<Option<String>, InvalidSetting> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if value
        .bytes()
        .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
    {
        Ok(Some(value.to_owned()))
    } else {
        Err(InvalidSetting {
            name: CACHE_CONTROL,
            value: value.to_owned(),
            expected: "a Cache-Control value in visible ASCII",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Settings, InvalidSetting> {
        Settings::from_env(
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        )
    }

    #[test]
    fn defaults() {
        let settings = env(&[("PATH", "/bin"), ("WASMHTTPD_OTHER", "x")]).unwrap();
        assert_eq!(settings, Settings::default());
        assert_eq!(settings.cache_control.as_deref(), Some("no-cache"));
        assert!(settings.compression && settings.precompressed);
        assert!(!settings.dotfiles && !settings.directory_listing);
    }

    #[test]
    fn switches() {
        let settings = env(&[
            (DOTFILES, "on"),
            (DIRECTORY_LISTING, "TRUE"),
            (COMPRESSION, "0"),
            (PRECOMPRESSED, " no "),
        ])
        .unwrap();
        assert!(settings.dotfiles && settings.directory_listing);
        assert!(!settings.compression && !settings.precompressed);
        let err = env(&[(DOTFILES, "maybe")]).unwrap_err();
        assert_eq!(err.name, DOTFILES);
        assert_eq!(
            err.to_string(),
            "invalid WASMHTTPD_DOTFILES=\"maybe\": expected on or off"
        );
    }

    #[test]
    fn cache_control_values() {
        let value = env(&[(CACHE_CONTROL, "public, max-age=3600")]).unwrap();
        assert_eq!(value.cache_control.as_deref(), Some("public, max-age=3600"));
        assert_eq!(env(&[(CACHE_CONTROL, "")]).unwrap().cache_control, None);
        assert!(env(&[(CACHE_CONTROL, "max-age=1\r\nx: y")]).is_err());
        assert!(env(&[(CACHE_CONTROL, "é")]).is_err());
    }
}
