//! Which IP families a Service gets: Kubernetes' defaulting and validation of
//! `spec.ipFamilyPolicy`, `spec.ipFamilies` and `spec.clusterIPs` for a cluster serving some
//! families (the families of `--service-cidr`, primary first), in one place.

use std::net::IpAddr;

use crate::model::IpFamily;

/// `spec.ipFamilyPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[expect(
    clippy::enum_variant_names,
    reason = "Kubernetes' names of the policies, as manifests spell them"
)]
pub(crate) enum FamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// What a Service asks for.
#[derive(Clone, Debug, Default)]
pub(crate) struct FamilyRequest {
    /// `spec.ipFamilyPolicy`; `None` when unset.
    pub policy: Option<FamilyPolicy>,
    /// `spec.ipFamilies`, parsed.
    pub families: Vec<IpFamily>,
    /// `spec.clusterIPs` (or `spec.clusterIP`) given, parsed, in order.
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None` without a selector: Kubernetes lets it have any families.
    pub headless_selectorless: bool,
}

/// Why a request cannot be met: the field at fault and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FamilyError {
    pub field: String,
    pub message: String,
}

fn error(field: impl Into<String>, message: impl Into<String>) -> FamilyError {
    FamilyError {
        field: field.into(),
        message: message.into(),
    }
}

/// The Service's families, primary first, as the API server would set `spec.ipFamilies` on a
/// cluster whose service CIDRs are of `cluster` (primary first, distinct, not empty):
///
/// - the families come from `ipFamilies`, then from the `clusterIPs` beyond it, then the
///   cluster's primary family; `clusterIPs[i]` must be of `ipFamilies[i]`;
/// - an unset policy is `RequireDualStack` when two families or addresses are given, else
///   `SingleStack`;
/// - `SingleStack` keeps one family; `PreferDualStack` adds the other one when the cluster has
///   both; `RequireDualStack` adds it, and is an error on a single-stack cluster;
/// - every family must be one the cluster serves, except for headless selectorless Services,
///   whose unset policy is `RequireDualStack` and which get both families unless
///   `SingleStack`, whatever the cluster (their addresses are not the cluster's).
pub(crate) fn decide(
    cluster: &[IpFamily],
    request: &FamilyRequest,
) -> Result<Vec<IpFamily>, FamilyError> {
    let primary = *cluster.first().expect("a cluster serves a family");
    check_shape(request)?;
    let mut families = request.families.clone();
    for (i, &ip) in request.cluster_ips.iter().enumerate() {
        let family = IpFamily::of(ip);
        match families.get(i) {
            Some(&wanted) if wanted != family => {
                return Err(error(
                    format!("spec.clusterIPs[{i}]"),
                    format!(
                        "{ip} is {family} but spec.ipFamilies[{i}] is {wanted}: list the \
                         addresses in the order of their families"
                    ),
                ));
            }
            Some(_) => {}
            None => families.push(family),
        }
    }
    let given_two = families.len() == 2;
    let policy = request.policy.unwrap_or(if given_two {
        FamilyPolicy::RequireDualStack
    } else {
        FamilyPolicy::SingleStack
    });
    if request.headless_selectorless {
        // Kubernetes defaults their policy to RequireDualStack, whatever the cluster.
        let policy = request.policy.unwrap_or(FamilyPolicy::RequireDualStack);
        if families.is_empty() {
            families.push(primary);
        }
        if policy != FamilyPolicy::SingleStack && families.len() == 1 {
            families.push(families[0].other());
        }
        if policy == FamilyPolicy::SingleStack && given_two {
            return Err(single_stack_with_two());
        }
        return Ok(families);
    }
    match policy {
        FamilyPolicy::SingleStack if given_two => return Err(single_stack_with_two()),
        FamilyPolicy::RequireDualStack if cluster.len() < 2 => {
            return Err(error(
                "spec.ipFamilyPolicy",
                format!(
                    "RequireDualStack, but this cluster serves {primary} only: give \
                     --service-cidr one range per family (e.g. 198.19.0.0/16,fd00:19::/108), \
                     or use PreferDualStack"
                ),
            ));
        }
        _ => {}
    }
    if families.is_empty() {
        families.push(primary);
    }
    let dual = matches!(
        policy,
        FamilyPolicy::PreferDualStack | FamilyPolicy::RequireDualStack
    );
    if dual && families.len() == 1 && cluster.len() == 2 {
        families.push(families[0].other());
    }
    for (i, family) in families.iter().enumerate() {
        if !cluster.contains(family) {
            let field = if i < request.families.len() {
                format!("spec.ipFamilies[{i}]")
            } else {
                format!("spec.clusterIPs[{i}]")
            };
            return Err(error(
                field,
                format!(
                    "{family} is not served by this cluster (--service-cidr has no {family} \
                     range): add one, or leave {family} out"
                ),
            ));
        }
    }
    Ok(families)
}

/// The checks of what the API allows whatever the cluster: at most two families and two
/// addresses, of different families each.
fn check_shape(request: &FamilyRequest) -> Result<(), FamilyError> {
    if request.families.len() > 2 {
        return Err(error(
            "spec.ipFamilies",
            format!(
                "has {} entries: a Service has at most two families (IPv4 and IPv6)",
                request.families.len()
            ),
        ));
    }
    if let [first, second] = request.families[..]
        && first == second
    {
        return Err(error(
            "spec.ipFamilies[1]",
            format!("repeats {first}: list each family once"),
        ));
    }
    if request.cluster_ips.len() > 2 {
        return Err(error(
            "spec.clusterIPs",
            format!(
                "has {} entries: a Service has at most two cluster IPs, one per family",
                request.cluster_ips.len()
            ),
        ));
    }
    if let [first, second] = request.cluster_ips[..]
        && IpFamily::of(first) == IpFamily::of(second)
    {
        return Err(error(
            "spec.clusterIPs[1]",
            format!(
                "{second} is {} like clusterIPs[0]: a dual-stack Service has one cluster IP of \
                 each family",
                IpFamily::of(second)
            ),
        ));
    }
    Ok(())
}

fn single_stack_with_two() -> FamilyError {
    error(
        "spec.ipFamilyPolicy",
        "SingleStack, but two families or cluster IPs are given: use PreferDualStack or \
         RequireDualStack, or give one",
    )
}

#[cfg(test)]
mod tests {
    use super::{FamilyPolicy::*, *};
    use crate::model::IpFamily::{V4, V6};

    const V4_ONLY: &[IpFamily] = &[V4];
    const V6_ONLY: &[IpFamily] = &[V6];
    const DUAL_V4: &[IpFamily] = &[V4, V6];
    const DUAL_V6: &[IpFamily] = &[V6, V4];

    fn request(policy: Option<FamilyPolicy>, families: &[IpFamily], ips: &[&str]) -> FamilyRequest {
        FamilyRequest {
            policy,
            families: families.to_vec(),
            cluster_ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            headless_selectorless: false,
        }
    }

    /// Kubernetes' table (docs: "Services" under IPv4/IPv6 dual-stack): policy × cluster ×
    /// requested families and addresses → families, or the field at fault.
    #[test]
    #[expect(clippy::too_many_lines, reason = "one table, a case a line")]
    fn families_per_policy_and_cluster() {
        type Case<'a> = (
            Option<FamilyPolicy>,
            &'a [IpFamily],
            &'a [&'a str],
            &'a [IpFamily],
            Result<&'a [IpFamily], &'a str>,
        );
        let cases: &[Case] = &[
            // Nothing asked: the cluster's primary family, whatever the cluster.
            (None, &[], &[], V4_ONLY, Ok(&[V4])),
            (None, &[], &[], DUAL_V4, Ok(&[V4])),
            (None, &[], &[], DUAL_V6, Ok(&[V6])),
            (None, &[], &[], V6_ONLY, Ok(&[V6])),
            (Some(SingleStack), &[], &[], DUAL_V6, Ok(&[V6])),
            // A family or an address picks the family.
            (None, &[V6], &[], DUAL_V4, Ok(&[V6])),
            (None, &[], &["fd00:19::10"], DUAL_V4, Ok(&[V6])),
            (
                Some(SingleStack),
                &[V6],
                &[],
                V4_ONLY,
                Err("spec.ipFamilies[0]"),
            ),
            (
                None,
                &[],
                &["fd00:19::10"],
                V4_ONLY,
                Err("spec.clusterIPs[0]"),
            ),
            // PreferDualStack: both where the cluster has both, primary first.
            (Some(PreferDualStack), &[], &[], DUAL_V4, Ok(&[V4, V6])),
            (Some(PreferDualStack), &[], &[], DUAL_V6, Ok(&[V6, V4])),
            (Some(PreferDualStack), &[V6], &[], DUAL_V4, Ok(&[V6, V4])),
            (Some(PreferDualStack), &[], &[], V4_ONLY, Ok(&[V4])),
            (
                Some(PreferDualStack),
                &[],
                &["198.19.0.10"],
                V4_ONLY,
                Ok(&[V4]),
            ),
            (
                Some(PreferDualStack),
                &[V4, V6],
                &[],
                V4_ONLY,
                Err("spec.ipFamilies[1]"),
            ),
            // RequireDualStack: both, or an error on a single-stack cluster.
            (Some(RequireDualStack), &[], &[], DUAL_V4, Ok(&[V4, V6])),
            (Some(RequireDualStack), &[V6], &[], DUAL_V4, Ok(&[V6, V4])),
            (
                Some(RequireDualStack),
                &[],
                &[],
                V4_ONLY,
                Err("spec.ipFamilyPolicy"),
            ),
            // Two families or addresses: an unset policy means RequireDualStack.
            (None, &[V6, V4], &[], DUAL_V4, Ok(&[V6, V4])),
            (
                None,
                &[],
                &["198.19.0.10", "fd00:19::10"],
                DUAL_V6,
                Ok(&[V4, V6]),
            ),
            (None, &[V4, V6], &[], V4_ONLY, Err("spec.ipFamilyPolicy")),
            (
                Some(SingleStack),
                &[V4, V6],
                &[],
                DUAL_V4,
                Err("spec.ipFamilyPolicy"),
            ),
            // Invalid combinations, whatever the cluster.
            (None, &[V4, V4], &[], DUAL_V4, Err("spec.ipFamilies[1]")),
            (None, &[V4, V6, V4], &[], DUAL_V4, Err("spec.ipFamilies")),
            (
                None,
                &[],
                &["198.19.0.10", "198.19.0.11"],
                DUAL_V4,
                Err("spec.clusterIPs[1]"),
            ),
            (
                None,
                &[V4],
                &["fd00:19::10"],
                DUAL_V4,
                Err("spec.clusterIPs[0]"),
            ),
            (
                None,
                &[V6, V4],
                &["fd00:19::10", "fd00:19::11"],
                DUAL_V4,
                Err("spec.clusterIPs[1]"),
            ),
        ];
        for (policy, families, ips, cluster, expected) in cases {
            let got = decide(cluster, &request(*policy, families, ips));
            let got = got.as_deref().map_err(|e| e.field.as_str());
            assert_eq!(
                got,
                expected.map(|f| f),
                "{policy:?} families {families:?} ips {ips:?} on {cluster:?}"
            );
        }
    }

    #[test]
    fn headless_selectorless_services_take_any_families() {
        let headless = |policy, families: &[IpFamily]| FamilyRequest {
            headless_selectorless: true,
            ..request(policy, families, &[])
        };
        assert_eq!(decide(V4_ONLY, &headless(None, &[])), Ok(vec![V4, V6]));
        assert_eq!(
            decide(V4_ONLY, &headless(Some(SingleStack), &[])),
            Ok(vec![V4])
        );
        assert_eq!(decide(V4_ONLY, &headless(None, &[V6])), Ok(vec![V6, V4]));
        assert_eq!(
            decide(V4_ONLY, &headless(Some(SingleStack), &[V4, V6])).map_err(|e| e.field),
            Err("spec.ipFamilyPolicy".to_owned())
        );
    }
}
