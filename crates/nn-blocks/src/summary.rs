//! Per-layer accounting of output shapes, parameters and multiply-adds,
//! computed from shapes alone (no forward pass), in the spirit of torchsummaryX.

use std::fmt::Write as _;

/// One row of a [`Summary`].
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    /// PyTorch module path of the layer (e.g. `backbone.layer1.ds_conv`).
    pub name: String,
    /// Layer kind (e.g. `ConvBnAct`, `Conv2d`, `Linear`).
    pub kind: &'static str,
    /// Output shape, batch first.
    pub output_shape: Vec<usize>,
    /// Trainable parameters of the layer.
    pub params: usize,
    /// Multiply-adds of its convolutions / linear maps.
    pub macs: u64,
    /// What torchsummaryX adds for a BatchNorm: one per channel (its `weight` numel).
    pub bn_macs: u64,
}

/// A list of [`SummaryRow`]s with totals.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Rows in execution order.
    pub rows: Vec<SummaryRow>,
}

impl Summary {
    /// Appends a row without BatchNorm.
    pub fn push(
        &mut self,
        name: &str,
        kind: &'static str,
        shape: &[usize],
        params: usize,
        macs: u64,
    ) {
        self.push_with_bn(name, kind, shape, params, macs, 0);
    }

    /// Appends a row whose layer ends in a BatchNorm counted as `bn_macs` by torchsummaryX.
    pub fn push_with_bn(
        &mut self,
        name: &str,
        kind: &'static str,
        shape: &[usize],
        params: usize,
        macs: u64,
        bn_macs: u64,
    ) {
        self.rows.push(SummaryRow {
            name: name.to_string(),
            kind,
            output_shape: shape.to_vec(),
            params,
            macs,
            bn_macs,
        });
    }

    /// Sum of the parameters of all rows.
    pub fn total_params(&self) -> usize {
        self.rows.iter().map(|r| r.params).sum()
    }

    /// Sum of the convolution and linear multiply-adds of all rows.
    pub fn total_macs(&self) -> u64 {
        self.rows.iter().map(|r| r.macs).sum()
    }

    /// Total as torchsummaryX prints it: conv/linear multiply-adds plus one per BatchNorm channel.
    pub fn total_macs_torchsummaryx(&self) -> u64 {
        self.rows.iter().map(|r| r.macs + r.bn_macs).sum()
    }

    /// Renders the table with a totals footer.
    pub fn render(&self) -> String {
        let shape = |s: &[usize]| {
            let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("[{}]", parts.join(", "))
        };
        let name_w = self
            .rows
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let shape_w = self
            .rows
            .iter()
            .map(|r| shape(&r.output_shape).len())
            .max()
            .unwrap_or(12)
            .max(12);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<4} {:<name_w$} {:<10} {:<shape_w$} {:>12} {:>16}",
            "#", "Layer", "Kind", "Output shape", "Params", "Mult-Adds"
        );
        let rule = "-".repeat(4 + name_w + 10 + shape_w + 12 + 16 + 5);
        let _ = writeln!(out, "{rule}");
        for (i, r) in self.rows.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:<4} {:<name_w$} {:<10} {:<shape_w$} {:>12} {:>16}",
                i,
                r.name,
                r.kind,
                shape(&r.output_shape),
                group_thousands(r.params as u64),
                group_thousands(r.macs)
            );
        }
        let _ = writeln!(out, "{rule}");
        let _ = writeln!(
            out,
            "Total params: {}\nConv + linear mult-adds: {} ({:.4} G)\nMult-adds as torchsummaryX counts them (+1 per BatchNorm channel): {}",
            group_thousands(self.total_params() as u64),
            group_thousands(self.total_macs()),
            self.total_macs() as f64 / 1e9,
            group_thousands(self.total_macs_torchsummaryx()),
        );
        out
    }
}

/// Output (H, W) of a convolution with square kernel `k`, `stride` and `padding`.
pub fn conv_output_hw(
    input: (usize, usize),
    k: usize,
    stride: usize,
    padding: usize,
) -> (usize, usize) {
    let f = |n: usize| (n + 2 * padding - k) / stride + 1;
    (f(input.0), f(input.1))
}

/// `1234567` -> `"1,234,567"`.
pub fn group_thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_sizes() {
        assert_eq!(conv_output_hw((416, 416), 3, 2, 1), (208, 208));
        assert_eq!(conv_output_hw((13, 13), 3, 2, 1), (7, 7));
        assert_eq!(conv_output_hw((320, 480), 1, 1, 0), (320, 480));
    }

    #[test]
    fn thousands() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
        assert_eq!(group_thousands(61_949_149), "61,949,149");
    }
}
