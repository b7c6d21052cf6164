//! Port ranges as flags write them: `LOW-HIGH` (inclusive) or one port.

use std::ops::RangeInclusive;

/// Parses `LOW-HIGH` (inclusive) or a single port, surrounding spaces ignored, as
/// kube-apiserver parses its port ranges (`k8s.io/apimachinery/pkg/util/net.PortRange`); port
/// 0 is no port. `example` is a valid range for the error message.
pub fn parse(text: &str, example: &str) -> Result<RangeInclusive<u16>, String> {
    let expected = || {
        format!(
            "expected a port range like {example} (LOW-HIGH, inclusive) or one port, got {text:?}"
        )
    };
    let port = |part: &str| match part.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(expected()),
        Ok(port) => Ok(port),
    };
    let trimmed = text.trim();
    let (min, max) = if let Some((low, high)) = trimmed.split_once('-') {
        (port(low)?, port(high)?)
    } else {
        let single = port(trimmed)?;
        (single, single)
    };
    if max < min {
        return Err(format!(
            "{text:?}: the range ends ({max}) before it starts ({min})"
        ));
    }
    Ok(min..=max)
}
