//! Median and spread over repeated runs: every figure in the report is one of these.

/// A set of repeated measurements of one quantity.
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median(),
            self.min(),
            self.max()
        )
    }
}

/// Element-wise `a[i] / b[i]`: ratios of runs made back to back.
pub fn ratio(a: &Samples, b: &Samples) -> Samples {
    Samples(a.0.iter().zip(&b.0).map(|(a, b)| a / b).collect())
}

/// Element-wise `a[i] - b[i]`.
pub fn minus(a: &Samples, b: &Samples) -> Samples {
    Samples(a.0.iter().zip(&b.0).map(|(a, b)| a - b).collect())
}

/// Counts and byte sizes as `f64`, for rates, ratios, means and plot axes.
pub trait ToF64 {
    fn to_f64(self) -> f64;
}

impl ToF64 for u64 {
    #[expect(
        clippy::cast_precision_loss,
        reason = "a benchmark's counts and sizes stay far below 2^53, where f64 starts rounding"
    )]
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl ToF64 for usize {
    #[expect(
        clippy::cast_precision_loss,
        reason = "a benchmark's counts and sizes stay far below 2^53, where f64 starts rounding"
    )]
    fn to_f64(self) -> f64 {
        self as f64
    }
}

/// Bytes in a MiB.
pub const MIB: f64 = 1_048_576.0;

/// Bytes in MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes.to_f64() / MIB
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Samples(vec![3.0, 1.0, 2.0]).median(), 2.0);
        assert_eq!(Samples(vec![4.0, 1.0, 2.0, 3.0]).median(), 2.5);
        assert_eq!(ratio(&Samples(vec![4.0]), &Samples(vec![2.0])).0, [2.0]);
    }
}
