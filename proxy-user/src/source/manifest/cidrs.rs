//! `--service-cidr`: the cluster's service ranges, one per family, the first one's family the
//! primary (as kube-apiserver's `--service-cluster-ip-range=<v4>,<v6>`).

use std::{fmt, str::FromStr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::model::IpFamily;

/// One service CIDR per family the cluster serves, primary first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceCidrs(Vec<IpNet>);

impl ServiceCidrs {
    /// The ranges in the order given: at least one, at most one per family.
    pub fn new(cidrs: impl IntoIterator<Item = IpNet>) -> Result<Self, String> {
        let mut out: Vec<IpNet> = Vec::new();
        for cidr in cidrs {
            let family = IpFamily::of_net(&cidr);
            if let Some(first) = out.iter().find(|net| IpFamily::of_net(net) == family) {
                return Err(format!(
                    "--service-cidr: {cidr} is a second {family} range besides {first}: give at \
                     most one range per family"
                ));
            }
            out.push(cidr.trunc());
        }
        if out.is_empty() {
            return Err("--service-cidr: give at least one range".to_owned());
        }
        Ok(Self(out))
    }

    /// An IPv4-only cluster.
    pub fn ipv4(cidr: Ipv4Net) -> Self {
        Self(vec![cidr.trunc().into()])
    }

    /// Every address of both families, IPv4 primary (cluster mode: the API server allocates,
    /// and checked its own ranges).
    pub fn any() -> Self {
        Self(vec![Ipv4Net::default().into(), Ipv6Net::default().into()])
    }

    /// The cluster's families, primary first.
    pub fn families(&self) -> Vec<IpFamily> {
        self.0.iter().map(IpFamily::of_net).collect()
    }

    /// The range of `family`, if the cluster serves it.
    pub fn of(&self, family: IpFamily) -> Option<IpNet> {
        self.0
            .iter()
            .find(|net| IpFamily::of_net(net) == family)
            .copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = &IpNet> {
        self.0.iter()
    }
}

impl fmt::Display for ServiceCidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cidrs: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&cidrs.join(","))
    }
}

/// `A[,B]`.
impl FromStr for ServiceCidrs {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let cidrs = text
            .split(',')
            .map(|part| {
                part.trim().parse::<IpNet>().map_err(|_| {
                    format!("--service-cidr: expected a CIDR like 198.19.0.0/16, got {part:?}")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(cidrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_range_per_family_primary_first() {
        let cidrs: ServiceCidrs = "fd00:19::/108, 198.19.0.0/16".parse().unwrap();
        assert_eq!(cidrs.families(), [IpFamily::V6, IpFamily::V4]);
        assert_eq!(
            cidrs.of(IpFamily::V4),
            Some("198.19.0.0/16".parse().unwrap())
        );
        assert_eq!(cidrs.to_string(), "fd00:19::/108,198.19.0.0/16");
        let err = "198.19.0.0/16,10.96.0.0/12"
            .parse::<ServiceCidrs>()
            .unwrap_err();
        assert!(err.contains("second IPv4 range"), "{err}");
        assert!("198.19.0.0/16,nope".parse::<ServiceCidrs>().is_err());
    }
}
