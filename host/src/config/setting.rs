//! One declaration per setting: `settings!` turns a list of fields, each
//! with its doc comment, its [`Unit`] and its default, into the struct the
//! server reads, its `Default`, its command-line flags (`--guest-timeout`,
//! with the doc as `--help` and the default shown there), its environment
//! variables (`WASMHTTPD_GUEST_TIMEOUT`), its configuration-file keys
//! (`guest-timeout = 5`) and, for the settings a route may set for itself,
//! the route's overrides (`/api=api.wasm,guest-timeout=5`).
//!
//! A setting's unit says how its value is written in all of those places
//! (seconds, MiB, a count) and checks it, so a flag, a file key and a route
//! option take the same text and fail with the same message.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches};

use super::file::ConfigFile;

/// How a setting's value is written and checked.
pub trait Unit: 'static {
    /// The value the server uses.
    type Value: Clone + Send + Sync + 'static;
    /// The placeholder in `--help` (`SECS`, `MIB`).
    const VALUE_NAME: &'static str;

    /// Parses the value from a flag, an environment variable or a route
    /// option; the error says what the setting takes.
    fn parse(text: &str) -> Result<Self::Value, String>;

    /// Reads the value from the configuration file, whose directory relative
    /// paths are resolved against. Numbers and strings are read as the same
    /// text a flag takes.
    fn from_file(value: &toml::Value, file: &ConfigFile) -> Result<Self::Value, String> {
        let _ = file;
        match value {
            toml::Value::String(text) => Self::parse(text),
            toml::Value::Integer(n) => Self::parse(&n.to_string()),
            toml::Value::Float(x) => Self::parse(&x.to_string()),
            other => Err(format!("expected a value like a flag's, not {other}")),
        }
    }

    /// The default as `--help` shows it; `None` shows none.
    fn show(value: &Self::Value) -> Option<String>;

    /// The flag, given its id, placeholder and parser.
    fn arg(arg: Arg) -> Arg {
        arg.value_name(Self::VALUE_NAME)
            .value_parser(|text: &str| Self::parse(text))
    }

    /// The value given on the command line or in the environment, if any.
    fn given(matches: &ArgMatches, id: &str) -> Option<Self::Value> {
        matches.get_one::<Self::Value>(id).cloned()
    }

    /// The value of an option a route gives twice: the later one, or, for
    /// a list, both.
    fn combine(earlier: Self::Value, later: Self::Value) -> Self::Value {
        let _ = earlier;
        later
    }
}

/// What one declared setting is, for `--help`, the file's keys and the
/// README: its name as a flag and as a file key, and its doc.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The field's name (`guest_timeout`).
    pub field: &'static str,
    /// The doc comment's lines.
    pub doc: &'static [&'static str],
    /// Whether a route may set it for itself.
    pub per_route: bool,
}

impl Setting {
    /// The flag's long name, the file key and the route option:
    /// `guest-timeout`.
    pub fn key(&self) -> String {
        self.field.replace('_', "-")
    }

    /// The environment variable: `WASMHTTPD_GUEST_TIMEOUT`.
    pub fn env(&self) -> String {
        format!("WASMHTTPD_{}", self.field.to_ascii_uppercase())
    }

    /// The doc comment as one paragraph of help.
    pub fn help(&self) -> String {
        self.doc
            .iter()
            .map(|line| line.trim())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The flag for this setting, showing `default` in its help.
    pub fn arg<U: Unit>(&self, default: &U::Value) -> Arg {
        let mut help = self.help();
        if let Some(default) = U::show(default) {
            help.push_str(&format!(" [default: {default}]"));
        }
        U::arg(
            Arg::new(self.key())
                .long(self.key())
                .env(self.env())
                .help(help),
        )
    }

    /// The value the command line or the environment gives it, if any.
    pub fn given<U: Unit>(&self, matches: &ArgMatches) -> Option<U::Value> {
        U::given(matches, &self.key())
    }

    /// The value the configuration file gives it, if any.
    pub fn from_file<U: Unit>(&self, file: &ConfigFile) -> Result<Option<U::Value>, String> {
        let key = self.key();
        file.take(&key)
            .map(|value| {
                U::from_file(value, file)
                    .map_err(|err| format!("invalid {key} in {}: {err}", file.path().display()))
            })
            .transpose()
    }

    /// Parses a route's `key=value` option for this setting.
    pub fn parse<U: Unit>(&self, text: &str) -> Result<U::Value, String> {
        U::parse(text).map_err(|err| format!("route setting {}: {err}", self.key()))
    }
}

/// Where `settings!` puts each setting's [`Setting`], apart from the
/// struct's fields of the same names.
pub(crate) struct Declared<T>(PhantomData<T>);

/// Declares a group of settings: the struct, its `Default`, and its
/// flags, environment variables and file keys; with a second struct, the
/// settings a route may set for itself, as that struct of overrides.
///
/// ```ignore
/// settings! {
///     /// The server's limits.
///     pub struct Limits {
///         /// Largest request body, in bytes (then 413).
///         max_body_bytes: Bytes<u64> = DEFAULT_MAX_BODY_BYTES,
///     }
///     /// A route's own limits.
///     pub struct RouteLimits {
///         /// Seconds a guest has for its response head.
///         guest_timeout: Secs = DEFAULT_GUEST_TIMEOUT,
///     }
/// }
/// ```
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[doc = $doc:literal])+ $field:ident: $unit:ty = $default:expr, )*
        }
        $(
            $(#[$route_meta:meta])*
            pub struct $route:ident {
                $( $(#[doc = $route_doc:literal])+ $route_field:ident: $route_unit:ty = $route_default:expr, )*
            }
        )?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[doc = $doc])+ pub $field: <$unit as $crate::config::setting::Unit>::Value, )*
            $($( $(#[doc = $route_doc])+ pub $route_field: <$route_unit as $crate::config::setting::Unit>::Value, )*)?
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    $( $field: $default, )*
                    $($( $route_field: $route_default, )*)?
                }
            }
        }

        // Each setting's declaration, named as its field.
        #[allow(non_upper_case_globals)]
        impl $crate::config::setting::Declared<$name> {
            $(
                const $field: $crate::config::setting::Setting = $crate::config::setting::Setting {
                    field: stringify!($field),
                    doc: &[$($doc),+],
                    per_route: false,
                };
            )*
            $($(
                const $route_field: $crate::config::setting::Setting = $crate::config::setting::Setting {
                    field: stringify!($route_field),
                    doc: &[$($route_doc),+],
                    per_route: true,
                };
            )*)?
        }

        impl $name {
            /// Every setting of the group, in the order declared.
            pub const SETTINGS: &'static [$crate::config::setting::Setting] = &[
                $( $crate::config::setting::Declared::<$name>::$field, )*
                $($( $crate::config::setting::Declared::<$name>::$route_field, )*)?
            ];

            /// The command-line flags, each showing its default in `--help`.
            pub fn args() -> Vec<clap::Arg> {
                let defaults = Self::default();
                vec![
                    $( $crate::config::setting::Declared::<$name>::$field.arg::<$unit>(&defaults.$field), )*
                    $($( $crate::config::setting::Declared::<$name>::$route_field.arg::<$route_unit>(&defaults.$route_field), )*)?
                ]
            }

            /// Takes the values the configuration file gives.
            pub fn read_file(
                &mut self,
                file: &$crate::config::file::ConfigFile,
            ) -> Result<(), String> {
                $(
                    if let Some(value) = $crate::config::setting::Declared::<$name>::$field.from_file::<$unit>(file)? {
                        self.$field = value;
                    }
                )*
                $($(
                    if let Some(value) = $crate::config::setting::Declared::<$name>::$route_field.from_file::<$route_unit>(file)? {
                        self.$route_field = value;
                    }
                )*)?
                Ok(())
            }

            /// Takes the values the command line and the environment give,
            /// which win over the file's.
            pub fn read_flags(&mut self, matches: &clap::ArgMatches) {
                $(
                    if let Some(value) = $crate::config::setting::Declared::<$name>::$field.given::<$unit>(matches) {
                        self.$field = value;
                    }
                )*
                $($(
                    if let Some(value) = $crate::config::setting::Declared::<$name>::$route_field.given::<$route_unit>(matches) {
                        self.$route_field = value;
                    }
                )*)?
            }
        }

        $(
            $(#[$route_meta])*
            #[derive(Debug, Clone, Default, PartialEq)]
            pub struct $route {
                $( $(#[doc = $route_doc])+ pub $route_field: Option<<$route_unit as $crate::config::setting::Unit>::Value>, )*
            }

            impl $route {
                /// The options a route takes, as `key=value` after its file.
                pub fn keys() -> Vec<String> {
                    vec![$( $crate::config::setting::Declared::<$name>::$route_field.key(), )*]
                }

                /// Parses `key=value` options (`guest-timeout=5`), as
                /// `--route` takes them after the file name.
                pub fn parse<'a>(
                    options: impl IntoIterator<Item = &'a str>,
                ) -> Result<$route, String> {
                    let mut route = $route::default();
                    for option in options {
                        let (key, value) = option
                            .split_once('=')
                            .ok_or_else(|| format!("route setting {option:?} is not key=value"))?;
                        match key {
                            $( key if key == $crate::config::setting::Declared::<$name>::$route_field.key() => {
                                let value = $crate::config::setting::Declared::<$name>::$route_field.parse::<$route_unit>(value)?;
                                route.$route_field = Some(match route.$route_field.take() {
                                    Some(earlier) => <$route_unit as $crate::config::setting::Unit>::combine(earlier, value),
                                    None => value,
                                });
                            } )*
                            _ => {
                                return Err(format!(
                                    "unknown route setting {key:?}: expected one of {}",
                                    Self::keys().join(", ")
                                ));
                            }
                        }
                    }
                    Ok(route)
                }

                /// The server's `limits` with this route's own in their place.
                pub fn apply(&self, limits: &$name) -> $name {
                    $name {
                        $( $route_field: self
                            .$route_field
                            .clone()
                            .unwrap_or_else(|| limits.$route_field.clone()), )*
                        ..limits.clone()
                    }
                }
            }
        )?
    };
}

pub(crate) use settings;

/// A duration in seconds, fractions allowed: `30`, `2.5`.
pub struct Secs;

impl Unit for Secs {
    type Value = Duration;
    const VALUE_NAME: &'static str = "SECS";

    fn parse(text: &str) -> Result<Duration, String> {
        text.trim()
            .parse::<f64>()
            .ok()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .ok_or_else(|| format!("takes seconds, such as 30 or 2.5, not {text:?}"))
    }

    fn show(value: &Duration) -> Option<String> {
        Some(value.as_secs_f64().to_string())
    }
}

/// A duration in milliseconds, a positive whole number: `50`.
pub struct Millis;

impl Unit for Millis {
    type Value = Duration;
    const VALUE_NAME: &'static str = "MS";

    fn parse(text: &str) -> Result<Duration, String> {
        text.trim()
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
            .ok_or_else(|| {
                format!("takes milliseconds, a positive whole number such as 100, not {text:?}")
            })
    }

    fn show(value: &Duration) -> Option<String> {
        Some(value.as_millis().to_string())
    }
}

/// A size in MiB, written as a positive whole number and kept in bytes.
pub struct Mib;

impl Unit for Mib {
    type Value = usize;
    const VALUE_NAME: &'static str = "MIB";

    fn parse(text: &str) -> Result<usize, String> {
        text.trim()
            .parse::<usize>()
            .ok()
            .filter(|mib| *mib > 0)
            .and_then(|mib| mib.checked_mul(1 << 20))
            .ok_or_else(|| format!("takes MiB, a positive whole number such as 64, not {text:?}"))
    }

    fn show(value: &usize) -> Option<String> {
        Some((value >> 20).to_string())
    }
}

/// A size in bytes, a whole number.
pub struct Bytes<T>(PhantomData<T>);

impl<T> Unit for Bytes<T>
where
    T: FromStr + ToString + Clone + Send + Sync + 'static,
{
    type Value = T;
    const VALUE_NAME: &'static str = "BYTES";

    fn parse(text: &str) -> Result<T, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("takes bytes, a whole number such as 8388608, not {text:?}"))
    }

    fn show(value: &T) -> Option<String> {
        Some(value.to_string())
    }
}

/// A count, a positive whole number.
pub struct Count<T>(PhantomData<T>);

impl<T> Unit for Count<T>
where
    T: FromStr + ToString + Clone + Send + Sync + PartialEq + Default + 'static,
{
    type Value = T;
    const VALUE_NAME: &'static str = "N";

    fn parse(text: &str) -> Result<T, String> {
        text.trim()
            .parse()
            .ok()
            .filter(|n| *n != T::default())
            .ok_or_else(|| format!("takes a positive whole number, not {text:?}"))
    }

    fn show(value: &T) -> Option<String> {
        Some(value.to_string())
    }
}

/// A socket address, `127.0.0.1:8080` or `[::1]:8080`.
pub struct Addr;

impl Unit for Addr {
    type Value = SocketAddr;
    const VALUE_NAME: &'static str = "ADDR";

    fn parse(text: &str) -> Result<SocketAddr, String> {
        text.trim()
            .parse()
            .map_err(|_| format!("takes an address such as 127.0.0.1:8080, not {text:?}"))
    }

    fn show(value: &SocketAddr) -> Option<String> {
        Some(value.to_string())
    }
}

/// A setting that may be left unset: no default in `--help`.
pub struct Maybe<U>(PhantomData<U>);

impl<U: Unit> Unit for Maybe<U> {
    type Value = Option<U::Value>;
    const VALUE_NAME: &'static str = U::VALUE_NAME;

    fn parse(text: &str) -> Result<Self::Value, String> {
        U::parse(text).map(Some)
    }

    fn from_file(value: &toml::Value, file: &ConfigFile) -> Result<Self::Value, String> {
        U::from_file(value, file).map(Some)
    }

    fn show(_: &Self::Value) -> Option<String> {
        None
    }

    fn arg(arg: Arg) -> Arg {
        U::arg(arg)
    }

    fn given(matches: &ArgMatches, id: &str) -> Option<Self::Value> {
        U::given(matches, id).map(Some)
    }
}

/// A path; in the configuration file, relative to the file's directory.
pub struct FsPath;

impl Unit for FsPath {
    type Value = PathBuf;
    const VALUE_NAME: &'static str = "PATH";

    fn parse(text: &str) -> Result<PathBuf, String> {
        if text.is_empty() {
            return Err("takes a path, not an empty string".to_owned());
        }
        Ok(PathBuf::from(text))
    }

    fn from_file(value: &toml::Value, file: &ConfigFile) -> Result<PathBuf, String> {
        match value {
            toml::Value::String(text) => Self::parse(text).map(|path| file.resolve(&path)),
            other => Err(format!("expected a path in a string, not {other}")),
        }
    }

    fn show(value: &PathBuf) -> Option<String> {
        Some(value.display().to_string())
    }
}

/// A flag that may repeat, each value parsed by `parse`.
pub(crate) fn list_arg<T: Clone + Send + Sync + 'static>(
    arg: clap::Arg,
    value_name: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> clap::Arg {
    arg.value_name(value_name)
        .action(clap::ArgAction::Append)
        .value_parser(move |text: &str| parse(text))
}

/// The strings of an array (or a lone string) in the configuration file.
pub(crate) fn strings(value: &toml::Value, what: &str) -> Result<Vec<String>, String> {
    match value {
        toml::Value::String(text) => Ok(vec![text.clone()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(text) => Ok(text.clone()),
                other => Err(format!("expected {what} in strings, not {other}")),
            })
            .collect(),
        other => Err(format!("expected an array of {what}, not {other}")),
    }
}

/// A switch: a flag without a value (`--no-watch`); `true` or `false` in
/// the file and the environment.
pub struct Switch;

impl Unit for Switch {
    type Value = bool;
    const VALUE_NAME: &'static str = "BOOL";

    fn parse(text: &str) -> Result<bool, String> {
        match text.trim() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" | "" => Ok(false),
            _ => Err(format!("takes true or false, not {text:?}")),
        }
    }

    fn from_file(value: &toml::Value, _: &ConfigFile) -> Result<bool, String> {
        value
            .as_bool()
            .ok_or_else(|| format!("takes true or false, not {value}"))
    }

    fn show(_: &bool) -> Option<String> {
        None
    }

    fn arg(arg: Arg) -> Arg {
        arg.action(ArgAction::SetTrue)
    }

    fn given(matches: &ArgMatches, id: &str) -> Option<bool> {
        match matches.value_source(id) {
            Some(ValueSource::CommandLine | ValueSource::EnvVariable) => Some(matches.get_flag(id)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_take_what_their_flags_say() {
        assert_eq!(Secs::parse("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(Secs::parse("0"), Ok(Duration::ZERO));
        assert_eq!(Secs::show(&Duration::from_secs(30)).unwrap(), "30");
        assert_eq!(Millis::parse("50"), Ok(Duration::from_millis(50)));
        assert_eq!(Millis::show(&Duration::from_millis(50)).unwrap(), "50");
        for bad in ["0", "-1", "2.5", "", "ms"] {
            assert!(Millis::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Mib::parse("16"), Ok(16 << 20));
        assert_eq!(Mib::show(&(64 << 20)).unwrap(), "64");
        assert_eq!(Count::<u32>::parse("50"), Ok(50));
        assert_eq!(Bytes::<u64>::parse("0"), Ok(0));
        assert_eq!(Switch::parse("true"), Ok(true));
        for bad in ["-1", "x", "NaN", "inf", ""] {
            assert!(Secs::parse(bad).is_err(), "{bad}");
        }
        for bad in ["0", "-3", "1.5", "", "99999999999999999999"] {
            assert!(Mib::parse(bad).is_err(), "{bad}");
        }
        for bad in ["0", "-1", "many"] {
            assert!(Count::<usize>::parse(bad).is_err(), "{bad}");
        }
        assert!(Bytes::<u64>::parse("-1").is_err());
        assert!(Switch::parse("maybe").is_err());
        let error = Mib::parse("12.5").unwrap_err();
        assert!(error.contains("MiB"), "{error}");
    }
}
