//! Command-line flags and environment, parsed up front so that a malformed value is reported
//! clearly (exit code 2) instead of surfacing later as a confusing test failure.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Address listened on when `HOST` is not set.
pub const DEFAULT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Port listened on when `PORT` is not set (the same default Plane documents for backends).
pub const DEFAULT_PORT: u16 = 8080;
/// What `GET /` names the backend when `PLANE_BACKEND_ID` is not set.
pub const UNKNOWN_BACKEND_ID: &str = "unknown";

pub const USAGE: &str =
    "usage: plane-test-backend [--exit-code N] [--ready-delay-ms N] [--ignore-sigterm]
env: HOST (default 0.0.0.0), PORT (default 8080), PLANE_BACKEND_ID";

/// The command-line flags.
#[derive(Debug, Default, PartialEq)]
pub struct Flags {
    /// Exit with this code at start, before listening.
    pub exit_code: Option<u8>,
    /// Wait this long before binding the port.
    pub ready_delay: Duration,
    /// Ignore SIGTERM, so only SIGKILL stops the process.
    pub ignore_sigterm: bool,
}

impl Flags {
    /// Parses `--flag VALUE` or `--flag=VALUE` arguments.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut flags = Flags::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (name, inline_value) = match arg.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None => (arg, None),
            };
            let mut value = || {
                inline_value
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match name.as_str() {
                "--exit-code" => flags.exit_code = Some(parse_number(&name, &value()?)?),
                "--ready-delay-ms" => {
                    flags.ready_delay = Duration::from_millis(parse_number(&name, &value()?)?)
                }
                "--ignore-sigterm" if inline_value.is_none() => flags.ignore_sigterm = true,
                _ => return Err(format!("unexpected argument {name:?}")),
            }
        }
        Ok(flags)
    }
}

/// Everything the server needs once it is past `--exit-code`.
#[derive(Debug)]
pub struct Config {
    pub addr: SocketAddr,
    pub backend_id: String,
    pub ready_delay: Duration,
    pub ignore_sigterm: bool,
}

impl Config {
    /// Reads `HOST`, `PORT` and `PLANE_BACKEND_ID` through `var`; unset means default, set but
    /// malformed (or not UTF-8) is an error.
    pub fn from_env(flags: Flags, var: impl Fn(&str) -> Option<OsString>) -> Result<Self, String> {
        let read = |name: &str| -> Result<Option<String>, String> {
            var(name)
                .map(|value| {
                    value
                        .into_string()
                        .map_err(|value| format!("{name}={value:?} is not UTF-8"))
                })
                .transpose()
        };
        let host = match read("HOST")? {
            Some(host) => host
                .parse()
                .map_err(|_| format!("HOST={host:?} is not an IP address"))?,
            None => DEFAULT_HOST,
        };
        let port = match read("PORT")? {
            Some(port) => parse_number("PORT", &port)?,
            None => DEFAULT_PORT,
        };
        Ok(Config {
            addr: SocketAddr::new(host, port),
            backend_id: read("PLANE_BACKEND_ID")?.unwrap_or_else(|| UNKNOWN_BACKEND_ID.to_owned()),
            ready_delay: flags.ready_delay,
            ignore_sigterm: flags.ignore_sigterm,
        })
    }
}

fn parse_number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{name}: {value:?} is not a valid number here"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Result<Flags, String> {
        Flags::parse(args.iter().map(|arg| arg.to_string()))
    }

    #[test]
    fn parses_flags_in_both_forms() {
        let parsed = flags(&[
            "--exit-code",
            "4",
            "--ready-delay-ms=250",
            "--ignore-sigterm",
        ])
        .unwrap();
        assert_eq!(
            parsed,
            Flags {
                exit_code: Some(4),
                ready_delay: Duration::from_millis(250),
                ignore_sigterm: true,
            }
        );
    }

    #[test]
    fn rejects_bad_flags() {
        assert!(flags(&["--exit-code"]).is_err());
        assert!(flags(&["--exit-code", "256"]).is_err());
        assert!(flags(&["--ready-delay-ms", "-1"]).is_err());
        assert!(flags(&["--ignore-sigterm=yes"]).is_err());
        assert!(flags(&["--bogus"]).is_err());
    }

    #[test]
    fn env_defaults_and_errors() {
        let config = Config::from_env(Flags::default(), |_| None).unwrap();
        assert_eq!(config.addr, SocketAddr::new(DEFAULT_HOST, DEFAULT_PORT));
        assert_eq!(config.backend_id, UNKNOWN_BACKEND_ID);

        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| OsString::from(value))
            }
        };
        let config = Config::from_env(
            Flags::default(),
            env(&[
                ("HOST", "127.0.0.1"),
                ("PORT", "9000"),
                ("PLANE_BACKEND_ID", "b1"),
            ]),
        )
        .unwrap();
        assert_eq!(config.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.backend_id, "b1");

        let error = Config::from_env(Flags::default(), env(&[("PORT", "http")])).unwrap_err();
        assert!(error.contains("PORT"), "{error}");
        assert!(Config::from_env(Flags::default(), env(&[("PORT", "70000")])).is_err());
        let error =
            Config::from_env(Flags::default(), env(&[("HOST", "example.com")])).unwrap_err();
        assert!(error.contains("HOST"), "{error}");
    }
}
