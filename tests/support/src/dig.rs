//! `dig` (Debian's dnsutils) against a test's DNS server, and reading its answers.

use anyhow::{ensure, Context};
use std::net::SocketAddr;

/// `dig @server ARGS`, bounded (2 s a try, 2 tries); its whole output.
pub fn dig(server: SocketAddr, args: &[&str]) -> anyhow::Result<String> {
    let at = format!("@{}", server.ip());
    let port = server.port().to_string();
    let output = std::process::Command::new("dig")
        .args([&at, "-p", &port, "+time=2", "+tries=2"])
        .args(args)
        .output()
        .context("running dig (Debian's dnsutils)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(output.status.success(), "dig {args:?}: {text}");
    Ok(text)
}

/// The `status:` of a dig answer, and whether it is authoritative.
pub fn status(text: &str) -> (&str, bool) {
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or("");
    (status, flags(text).contains(&"aa"))
}

/// The header flags of a dig answer (`qr`, `aa`, `tc`, …).
pub fn flags(text: &str) -> Vec<&str> {
    let flags = text.split("flags: ").nth(1).unwrap_or("");
    flags
        .split(';')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

/// The records of a dig answer's ANSWER (or AUTHORITY) section: `(type, value)`, the value
/// being the record's first field after its type.
pub fn section<'t>(text: &'t str, name: &str) -> Vec<(&'t str, &'t str)> {
    let header = format!(";; {name} SECTION:");
    let Some(rest) = text.split(header.as_str()).nth(1) else {
        return Vec::new();
    };
    rest.lines()
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let kind = fields.nth(3)?;
            let value = fields.next()?;
            Some((kind, value))
        })
        .collect()
}
