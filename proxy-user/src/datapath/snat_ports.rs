//! `--snat-ports`: the source ports of SNATed flows (to remote backends), by default the
//! largest run of ports the node's kernel does not hand out to its own connections.

use std::{fmt, ops::RangeInclusive, path::Path, str::FromStr};

/// What the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnatPorts {
    /// The largest run of ports from 1024 outside the node's ephemeral range
    /// (`net.ipv4.ip_local_port_range`, which IPv6 uses too): 1024-32767 with Linux's
    /// default 32768-60999.
    #[default]
    Auto,
    Range {
        min: u16,
        max: u16,
    },
}

/// The ports a flow's source port may be rewritten to: below them are the privileged ports,
/// which netfilter's masquerade keeps apart too.
const LOWEST: u16 = 1024;

impl SnatPorts {
    /// The range to use on a node whose kernel picks its connections' source ports from
    /// `ephemeral` (minus `reserved`, `net.ipv4.ip_local_reserved_ports`), and a warning when
    /// the two overlap: Sluice's SNAT ports are not the kernel's, so a node connection to a
    /// backend (a kubelet probe) could take a port a SNATed flow to it holds.
    pub fn resolve(
        self,
        ephemeral: RangeInclusive<u16>,
        reserved: &[RangeInclusive<u16>],
    ) -> (RangeInclusive<u16>, Option<String>) {
        let ports = match self {
            SnatPorts::Range { min, max } => min..=max,
            SnatPorts::Auto => {
                let below = (*ephemeral.start() > LOWEST).then(|| LOWEST..=ephemeral.start() - 1);
                let above = (*ephemeral.end() < u16::MAX)
                    .then(|| (ephemeral.end() + 1).max(LOWEST)..=u16::MAX);
                [below, above]
                    .into_iter()
                    .flatten()
                    .max_by_key(|run| run.clone().count())
                    .unwrap_or(FALLBACK)
            }
        };
        let shared = ports
            .clone()
            .filter(|port| ephemeral.contains(port) && !reserved.iter().any(|r| r.contains(port)))
            .count();
        let named = match self {
            SnatPorts::Auto => format!("auto ({})", text(&ports)),
            SnatPorts::Range { .. } => text(&ports),
        };
        let warning = (shared > 0).then(|| {
            format!(
                "--snat-ports {named}: {shared} of its ports are also the node's ephemeral ports {}-{} \
                 (net.ipv4.ip_local_port_range): a node connection to a backend could take a \
                 port a SNATed flow holds; reserve them (net.ipv4.ip_local_reserved_ports) or \
                 give a range outside",
                ephemeral.start(),
                ephemeral.end()
            )
        });
        (ports, warning)
    }
}

/// When the ephemeral range leaves no room: Sluice's former fixed range, with the warning.
const FALLBACK: RangeInclusive<u16> = 61000..=65535;

/// `ports` as the flag writes them.
pub fn text(ports: &RangeInclusive<u16>) -> String {
    format!("{}-{}", ports.start(), ports.end())
}

impl fmt::Display for SnatPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnatPorts::Auto => f.write_str("auto"),
            SnatPorts::Range { min, max } => write!(f, "{min}-{max}"),
        }
    }
}

impl FromStr for SnatPorts {
    type Err = String;

    /// `auto` or `LOW-HIGH` from 1024.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim() == "auto" {
            return Ok(SnatPorts::Auto);
        }
        let ports = crate::port_range::parse(text, "32768-65535")?;
        if *ports.start() < LOWEST {
            return Err(format!(
                "{text:?}: SNAT ports start at {LOWEST} (below are the privileged ports)"
            ));
        }
        Ok(SnatPorts::Range {
            min: *ports.start(),
            max: *ports.end(),
        })
    }
}

/// The node's ephemeral range and reserved ports, read from `proc_sys_net_ipv4`
/// (/proc/sys/net/ipv4 of the daemon's network namespace).
pub fn kernel_ports(
    proc_sys_net_ipv4: &Path,
) -> anyhow::Result<(RangeInclusive<u16>, Vec<RangeInclusive<u16>>)> {
    use anyhow::Context as _;
    let read = |name: &str| {
        let path = proc_sys_net_ipv4.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let text = read("ip_local_port_range")?;
    let ephemeral = parse_local_port_range(&text)
        .with_context(|| format!("net.ipv4.ip_local_port_range: {text:?}"))?;
    // Missing on kernels without it: nothing reserved.
    let reserved = read("ip_local_reserved_ports").unwrap_or_default();
    let reserved = reserved
        .trim()
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| crate::port_range::parse(part, "30000-32767"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("net.ipv4.ip_local_reserved_ports: {reserved:?}"))?;
    Ok((ephemeral, reserved))
}

/// `ip_local_port_range`'s `LOW\tHIGH`.
fn parse_local_port_range(text: &str) -> anyhow::Result<RangeInclusive<u16>> {
    let mut ports = text.split_whitespace().map(str::parse::<u16>);
    match (ports.next(), ports.next(), ports.next()) {
        (Some(Ok(low)), Some(Ok(high)), None) if low <= high => Ok(low..=high),
        _ => anyhow::bail!("expected two ports, LOW HIGH"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX_DEFAULT: RangeInclusive<u16> = 32768..=60999;

    #[test]
    fn auto_takes_the_largest_run_outside_the_ephemeral_range() {
        assert_eq!(
            SnatPorts::Auto.resolve(LINUX_DEFAULT, &[]),
            (1024..=32767, None)
        );
        assert_eq!(
            SnatPorts::Auto.resolve(1024..=40000, &[]),
            (40001..=65535, None)
        );
        // No room outside: the fallback, said.
        let (ports, warning) = SnatPorts::Auto.resolve(1024..=65535, &[]);
        assert_eq!(ports, FALLBACK);
        assert!(
            warning.as_deref().is_some_and(
                |w| w.starts_with("--snat-ports auto (61000-65535): 4536 of its ports")
            ),
            "{warning:?}"
        );
    }

    #[test]
    fn a_range_sharing_unreserved_ephemeral_ports_is_warned_about() {
        let wide = "1024-65535".parse::<SnatPorts>().unwrap();
        let (ports, warning) = wide.resolve(LINUX_DEFAULT, &[]);
        assert_eq!(ports, 1024..=65535);
        assert!(
            warning
                .as_deref()
                .is_some_and(|w| w.starts_with("--snat-ports 1024-65535: 28232 of its ports")),
            "{warning:?}"
        );
        // Reserved from the kernel, they are Sluice's alone.
        assert_eq!(wide.resolve(LINUX_DEFAULT, &[LINUX_DEFAULT]).1, None);
    }

    #[test]
    fn the_flag_reads_auto_or_a_range_from_1024() {
        assert_eq!("auto".parse(), Ok(SnatPorts::Auto));
        assert_eq!(
            "61000-61999".parse(),
            Ok(SnatPorts::Range {
                min: 61000,
                max: 61999
            })
        );
        for bad in ["80-2000", "0-100", "5000-4000", "x"] {
            assert!(bad.parse::<SnatPorts>().is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_local_port_range("32768\t60999\n").unwrap(),
            LINUX_DEFAULT
        );
        assert!(parse_local_port_range("32768").is_err());
    }
}
