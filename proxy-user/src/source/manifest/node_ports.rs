//! `--service-node-port-range`: the ports NodePorts (and health check NodePorts) may use and
//! are allocated from, written as kube-apiserver's flag of the same name (`30000-32767`).

use std::{fmt, ops::RangeInclusive, str::FromStr};

/// An inclusive range of NodePort numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePortRange {
    pub min: u16,
    pub max: u16,
}

impl NodePortRange {
    /// kube-apiserver's default.
    pub const DEFAULT: NodePortRange = NodePortRange {
        min: 30_000,
        max: 32_767,
    };
    /// Every port: in cluster mode the API server has checked nodePorts against its own range.
    pub const ANY: NodePortRange = NodePortRange { min: 1, max: 65535 };

    pub fn contains(&self, port: u16) -> bool {
        self.ports().contains(&port)
    }

    pub fn ports(&self) -> RangeInclusive<u16> {
        self.min..=self.max
    }

    /// How many ports it holds (never none).
    pub fn size(&self) -> u32 {
        u32::from(self.max - self.min) + 1
    }
}

impl Default for NodePortRange {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for NodePortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl FromStr for NodePortRange {
    type Err = String;

    /// `LOW-HIGH` (inclusive) or a single port, surrounding spaces ignored, as kube-apiserver
    /// parses it (`k8s.io/apimachinery/pkg/util/net.PortRange`); port 0 is not a NodePort.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let ports = crate::port_range::parse(text, &Self::DEFAULT.to_string())?;
        Ok(Self {
            min: *ports.start(),
            max: *ports.end(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_kube_apiserver_reads_them() {
        assert_eq!(
            "30000-32767".parse::<NodePortRange>(),
            Ok(NodePortRange::DEFAULT)
        );
        assert_eq!(
            " 20000-45000 ".parse::<NodePortRange>(),
            Ok(NodePortRange {
                min: 20_000,
                max: 45_000
            })
        );
        assert_eq!(
            "40000".parse::<NodePortRange>(),
            Ok(NodePortRange {
                min: 40_000,
                max: 40_000
            })
        );
        for bad in [
            "",
            "30000+767",
            "0-100",
            "100-70000",
            "abc",
            "32767-30000",
            "-5",
        ] {
            assert!(bad.parse::<NodePortRange>().is_err(), "{bad:?}");
        }
        assert_eq!(NodePortRange::DEFAULT.size(), 2768);
        assert!(NodePortRange::ANY.contains(40_000) && !NodePortRange::DEFAULT.contains(40_000));
    }
}
