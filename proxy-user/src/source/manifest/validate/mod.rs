//! Semantic checks that turn parsed Kubernetes objects into checked objects, reporting every
//! problem (not only the first) with its field path.

mod endpoints;
mod families;
mod node;
mod pod;
mod service;

use std::net::IpAddr;

pub(crate) use self::{
    endpoints::{check_endpoints, check_slice},
    node::check_node,
    pod::check_pod,
    service::{SCTP_UNSERVED, check_service},
};
use super::{
    error::Problems,
    k8s::{Integer, ObjectMeta, PortProtocol},
};
use crate::model::Protocol;

/// Which naming rule `metadata.name` follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NameRule {
    /// DNS-1035 label: Services.
    Label1035,
    /// DNS-1123 subdomain: everything else.
    Subdomain,
}

/// `metadata.name` and `metadata.namespace` (default "default"); `None` when the name is
/// missing or invalid.
pub(crate) fn check_meta(
    meta: &ObjectMeta,
    rule: NameRule,
    p: &mut Problems,
) -> Option<(String, String)> {
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let namespace_ok = if namespace.is_empty() || is_dns1123_label(&namespace) {
        true
    } else {
        p.error(
            "metadata.namespace",
            format!(
                "{namespace:?} is not a valid namespace: use lower-case letters, digits and \
                 '-', at most 63 characters"
            ),
        );
        false
    };
    let namespace = if namespace.is_empty() {
        "default".to_owned()
    } else {
        namespace
    };
    let name = check_name(meta, rule, p)?;
    namespace_ok.then_some((namespace, name))
}

/// `metadata.name`, when present and valid by `rule`.
pub(crate) fn check_name(meta: &ObjectMeta, rule: NameRule, p: &mut Problems) -> Option<String> {
    let name = match meta.name.as_deref() {
        None | Some("") => {
            p.error("metadata.name", "is missing: every object needs a name");
            return None;
        }
        Some(name) => name,
    };
    let (valid, what) = match rule {
        NameRule::Label1035 => (
            is_dns1035_label(name),
            "start with a lower-case letter, then lower-case letters, digits and '-', at \
             most 63 characters",
        ),
        NameRule::Subdomain => (
            is_dns1123_subdomain(name),
            "use lower-case letters, digits, '-' and '.', at most 253 characters",
        ),
    };
    if !valid {
        p.error(
            "metadata.name",
            format!("{name:?} is not a valid name: {what}"),
        );
        return None;
    }
    Some(name.to_owned())
}

/// A port number 1-65535. `None` (with an error) when it is out of range; `Ok(None)` when it
/// is missing.
pub(crate) fn check_port(value: Option<Integer>, field: &str, p: &mut Problems) -> Option<u16> {
    let Integer(value) = value?;
    match u16::try_from(value) {
        Ok(port) if port != 0 => Some(port),
        _ => {
            p.error(field, format!("expected an integer 1-65535, got {value}"));
            None
        }
    }
}

/// A required port number 1-65535.
pub(crate) fn require_port(value: Option<Integer>, field: &str, p: &mut Problems) -> Option<u16> {
    if value.is_none() {
        p.error(field, "is missing: give a port number 1-65535");
        return None;
    }
    check_port(value, field, p)
}

/// The protocol of an endpoint-side port (default TCP). SCTP is skipped with a note: only
/// Service ports make it an error.
pub(crate) fn endpoint_protocol(
    protocol: Option<PortProtocol>,
    field: &str,
    p: &mut Problems,
) -> Option<Protocol> {
    match protocol.unwrap_or(PortProtocol::Tcp) {
        PortProtocol::Tcp => Some(Protocol::Tcp),
        PortProtocol::Udp => Some(Protocol::Udp),
        PortProtocol::Sctp => {
            p.note(field, SCTP_UNSERVED);
            None
        }
    }
}

/// Parses an IP address, reporting what was expected.
pub(crate) fn parse_ip(text: &str, field: &str, p: &mut Problems) -> Option<IpAddr> {
    match text.trim().parse::<IpAddr>() {
        Ok(ip) if text.trim() == text => Some(ip),
        _ => {
            p.error(field, format!("expected an IP address, got {text:?}"));
            None
        }
    }
}

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1035 label: an RFC 1123 label that starts with a letter.
pub(crate) fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// An IANA service name, as Kubernetes accepts for port names (`IsValidPortName`): at most
/// 15 characters, lower-case letters, digits and non-repeated inner '-', at least one letter.
/// A name no pod has (a typo like `80x`) is caught later: its port gets no endpoints, with a
/// warning.
pub(crate) fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.ends_with('-')
        && !s.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names() {
        for good in ["http", "tcp-echo", "h2c", "a", "80x", "9p", "3gpp-gtp"] {
            assert!(is_port_name(good), "{good}");
        }
        for bad in [
            "",
            "80-x-",
            "8080",
            "Http",
            "-a",
            "a-",
            "a--b",
            "sixteen-chars-xx",
        ] {
            assert!(!is_port_name(bad), "{bad}");
        }
    }

    #[test]
    fn dns_names() {
        assert!(is_dns1035_label("web-1"));
        assert!(!is_dns1035_label("1web"));
        assert!(is_dns1123_label("1web"));
        assert!(is_dns1123_subdomain("echo-abc.x"));
        assert!(!is_dns1123_subdomain("Echo"));
        assert!(!is_dns1123_subdomain("a..b"));
    }
}
