//! Name maps from other conventions onto the reference PyTorch names.
//!
//! - [`yolov3_convs`]: darknet's `yolov3.cfg`, conv by conv in file order, with the
//!   block index of each conv and the reference name it becomes. Both the darknet
//!   `.weights` reader and the candle-yolo-v3 map use it.
//! - [`candle_yolo_v3_name`]: `{i}.conv_{i}.*` / `{i}.batch_norm_{i}.*` (candle's
//!   yolo-v3 example, `lmz/candle-yolo-v3`) → reference names.
//! - [`timm_mobilenetv2_name`]: timm `mobilenetv2_100` → torchvision `MobileNetV2`.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// One convolution of darknet's `yolov3.cfg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvSlot {
    /// Index of the block in the cfg, `[net]` excluded (the candle-yolo-v3 index).
    pub block: usize,
    /// Reference name of the conv weight, e.g. `backbone.layer1.ds_conv.weight`.
    pub weight: String,
    /// Reference prefix of its BatchNorm (`…bn`), or `None` for the linear 1x1 heads.
    pub bn: Option<String>,
    /// Reference name of the conv bias (heads only).
    pub bias: Option<String>,
    /// `(out, in, k, k)`.
    pub shape: [usize; 4],
}

impl ConvSlot {
    /// Number of f32 values darknet stores for this conv (BN or bias, then weights).
    pub fn floats(&self) -> usize {
        let out = self.shape[0];
        let per_out = if self.bn.is_some() { 4 } else { 1 };
        out * per_out + self.shape.iter().product::<usize>()
    }
}

/// The 75 convolutions of YOLOv3-Darknet53 in cfg order, for `num_classes` classes.
///
/// Block indices count every cfg section after `[net]`: convolutional, shortcut,
/// route, upsample and yolo (0..=106). The head convs with bias are blocks 81, 93 and
/// 105, the 1x1 convs in front of the three `[yolo]` layers.
pub fn yolov3_convs(num_classes: usize) -> Vec<ConvSlot> {
    let head = 3 * (5 + num_classes);
    let mut v = Vec::with_capacity(75);
    let mut block = 0;
    let conv = |v: &mut Vec<ConvSlot>, block: usize, name: String, bn: String, s: [usize; 4]| {
        v.push(ConvSlot {
            block,
            weight: format!("{name}.weight"),
            bn: Some(bn),
            bias: None,
            shape: s,
        });
    };
    // Block 0: the stem, 3 -> 32, 3x3.
    conv(
        &mut v,
        block,
        "backbone.conv1".into(),
        "backbone.bn1".into(),
        [32, 3, 3, 3],
    );
    block += 1;
    // Five stages: a stride-2 3x3 conv, then residuals (1x1 conv, 3x3 conv, shortcut).
    let stages = [
        (32, 64, 1),
        (64, 128, 2),
        (128, 256, 8),
        (256, 512, 8),
        (512, 1024, 4),
    ];
    let mut inplanes = 32;
    for (s, &(p0, p1, n)) in stages.iter().enumerate() {
        let l = format!("backbone.layer{}", s + 1);
        // Blocks 1, 5, 12, 37, 62: the downsampling conv.
        conv(
            &mut v,
            block,
            format!("{l}.ds_conv"),
            format!("{l}.ds_bn"),
            [p1, inplanes, 3, 3],
        );
        block += 1;
        for j in 0..n {
            let r = format!("{l}.residual_{j}");
            // 1x1 conv to p0, 3x3 conv back to p1, then the [shortcut] block.
            conv(
                &mut v,
                block,
                format!("{r}.conv1"),
                format!("{r}.bn1"),
                [p0, p1, 1, 1],
            );
            conv(
                &mut v,
                block + 1,
                format!("{r}.conv2"),
                format!("{r}.bn2"),
                [p1, p0, 3, 3],
            );
            block += 3;
        }
        inplanes = p1;
    }
    debug_assert_eq!(block, 75);
    // Heads: (first block, our name, input channels, f0, f1, then the block of the
    // branch conv before the upsample or None).
    let heads = [
        // 75..=80 last_layer0.0-5, 81 last_layer0.6, 82 yolo, 83 route -4, 84 last_layer1_conv, 85 upsample, 86 route -1,61
        (
            75,
            "last_layer0",
            1024,
            512,
            1024,
            Some((84, "last_layer1_conv", 512, 256)),
        ),
        // 87..=92 last_layer1.0-5, 93 last_layer1.6, 94 yolo, 95 route -4, 96 last_layer2_conv, 97 upsample, 98 route -1,36
        (
            87,
            "last_layer1",
            512 + 256,
            256,
            512,
            Some((96, "last_layer2_conv", 256, 128)),
        ),
        // 99..=104 last_layer2.0-5, 105 last_layer2.6, 106 yolo
        (99, "last_layer2", 256 + 128, 128, 256, None),
    ];
    for (first, name, cin, f0, f1, next) in heads {
        let plan = [
            (cin, f0, 1),
            (f0, f1, 3),
            (f1, f0, 1),
            (f0, f1, 3),
            (f1, f0, 1),
            (f0, f1, 3),
        ];
        for (i, &(ci, co, k)) in plan.iter().enumerate() {
            conv(
                &mut v,
                first + i,
                format!("{name}.{i}.conv"),
                format!("{name}.{i}.bn"),
                [co, ci, k, k],
            );
        }
        // The linear 1x1 head conv with bias, right before the [yolo] block.
        v.push(ConvSlot {
            block: first + 6,
            weight: format!("{name}.6.weight"),
            bn: None,
            bias: Some(format!("{name}.6.bias")),
            shape: [head, f1, 1, 1],
        });
        if let Some((b, cname, ci, co)) = next {
            conv(
                &mut v,
                b,
                format!("{cname}.conv"),
                format!("{cname}.bn"),
                [co, ci, 1, 1],
            );
        }
    }
    v
}

/// The darknet BN parameter order and the reference suffixes: beta, gamma, mean, var.
pub const DARKNET_BN_ORDER: [&str; 4] = ["bias", "weight", "running_mean", "running_var"];

/// Maps a candle-yolo-v3 name (`{i}.conv_{i}.weight`, `{i}.conv_{i}.bias`,
/// `{i}.batch_norm_{i}.{weight,bias,running_mean,running_var}`) onto the reference name.
pub fn candle_yolo_v3_name(name: &str, table: &[ConvSlot]) -> Option<String> {
    let (idx, rest) = name.split_once('.')?;
    let block: usize = idx.parse().ok()?;
    let (module, param) = rest.split_once('.')?;
    let slot = table.iter().find(|s| s.block == block)?;
    if module == format!("conv_{block}") {
        // {i}.conv_{i}.weight -> the conv weight; {i}.conv_{i}.bias -> the head bias
        match param {
            "weight" => Some(slot.weight.clone()),
            "bias" => slot.bias.clone(),
            _ => None,
        }
    } else if module == format!("batch_norm_{block}") {
        // {i}.batch_norm_{i}.{weight,bias,running_mean,running_var} -> {bn}.same
        let bn = slot.bn.as_ref()?;
        DARKNET_BN_ORDER
            .contains(&param)
            .then(|| format!("{bn}.{param}"))
    } else {
        None
    }
}

/// Whether the names look like candle-yolo-v3's.
pub fn looks_like_candle_yolo_v3<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.any(|n| n == "0.conv_0.weight" || n == "0.batch_norm_0.weight")
}

/// Whether the names look like timm's MobileNetV2.
pub fn looks_like_timm_mobilenetv2<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.any(|n| n == "conv_stem.weight")
}

/// Blocks per timm stage of MobileNetV2 (`blocks.i` has this many `blocks.i.j`).
const TIMM_STAGE_DEPTHS: [usize; 7] = [1, 2, 3, 4, 3, 3, 1];

/// Maps a timm `mobilenetv2_100` name onto torchvision's `MobileNetV2` names.
pub fn timm_mobilenetv2_name(name: &str) -> Option<String> {
    const BN: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];
    let bn_param = |p: &str| BN.contains(&p);
    if let Some(p) = name.strip_prefix("conv_stem.") {
        // conv_stem -> features.0.0 (stem conv)
        return (p == "weight").then(|| "features.0.0.weight".to_string());
    }
    if let Some(p) = name.strip_prefix("bn1.") {
        // bn1 -> features.0.1 (stem BN)
        return bn_param(p).then(|| format!("features.0.1.{p}"));
    }
    if let Some(p) = name.strip_prefix("conv_head.") {
        // conv_head -> features.18.0 (last 1x1 conv)
        return (p == "weight").then(|| "features.18.0.weight".to_string());
    }
    if let Some(p) = name.strip_prefix("bn2.") {
        // bn2 -> features.18.1 (last BN)
        return bn_param(p).then(|| format!("features.18.1.{p}"));
    }
    if let Some(p) = name.strip_prefix("classifier.") {
        // classifier -> classifier.1 (Dropout is classifier.0)
        return matches!(p, "weight" | "bias").then(|| format!("classifier.1.{p}"));
    }
    let rest = name.strip_prefix("blocks.")?;
    let mut it = rest.splitn(4, '.');
    let i: usize = it.next()?.parse().ok()?;
    let j: usize = it.next()?.parse().ok()?;
    let module = it.next()?;
    let param = it.next()?;
    if i >= TIMM_STAGE_DEPTHS.len() || j >= TIMM_STAGE_DEPTHS[i] {
        return None;
    }
    // blocks.i.j -> features.N with N = 1 + blocks before stage i + j
    let n = 1 + TIMM_STAGE_DEPTHS[..i].iter().sum::<usize>() + j;
    let sub = if i == 0 {
        // Stage 0 is timm's DepthwiseSeparableConv (no expansion, no conv_pw to hidden):
        match module {
            "conv_dw" => "0.0", // conv_dw -> conv.0.0 (3x3 depthwise)
            "bn1" => "0.1",     // bn1 -> conv.0.1
            "conv_pw" => "1",   // conv_pw -> conv.1 (1x1 linear projection)
            "bn2" => "2",       // bn2 -> conv.2
            _ => return None,
        }
    } else {
        // InvertedResidual:
        match module {
            "conv_pw" => "0.0", // conv_pw -> conv.0.0 (1x1 expansion)
            "bn1" => "0.1",     // bn1 -> conv.0.1
            "conv_dw" => "1.0", // conv_dw -> conv.1.0 (3x3 depthwise)
            "bn2" => "1.1",     // bn2 -> conv.1.1
            "conv_pwl" => "2",  // conv_pwl -> conv.2 (1x1 linear projection)
            "bn3" => "3",       // bn3 -> conv.3
            _ => return None,
        }
    };
    let is_conv = module.starts_with("conv");
    let ok = if is_conv {
        param == "weight"
    } else {
        bn_param(param)
    };
    ok.then(|| format!("features.{n}.conv.{sub}.{param}"))
}

/// Renames every tensor with `map`, dropping `num_batches_tracked` counters; fails on
/// a name the map does not know or on two names mapping onto one.
pub fn rename_all<T>(
    map_name: &'static str,
    tensors: Vec<(String, T)>,
    map: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, (String, T)>> {
    let mut out: BTreeMap<String, (String, T)> = BTreeMap::new();
    for (name, t) in tensors {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let target = map(&name).ok_or_else(|| Error::Unmapped {
            map: map_name,
            name: name.clone(),
        })?;
        if let Some((first, _)) = out.get(&target) {
            return Err(Error::Duplicate {
                map: map_name,
                first: first.clone(),
                second: name,
                target,
            });
        }
        out.insert(target, (name, t));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_75_convs_and_the_heads_have_bias() {
        let t = yolov3_convs(80);
        assert_eq!(t.len(), 75);
        let with_bias: Vec<usize> = t
            .iter()
            .filter(|s| s.bias.is_some())
            .map(|s| s.block)
            .collect();
        assert_eq!(with_bias, vec![81, 93, 105]);
        let find = |b: usize| t.iter().find(|s| s.block == b).unwrap().weight.clone();
        assert_eq!(find(0), "backbone.conv1.weight");
        assert_eq!(find(74 - 1), "backbone.layer5.residual_3.conv2.weight");
        assert_eq!(find(75), "last_layer0.0.conv.weight");
        assert_eq!(find(80), "last_layer0.5.conv.weight");
        assert_eq!(find(84), "last_layer1_conv.conv.weight");
        assert_eq!(find(87), "last_layer1.0.conv.weight");
        assert_eq!(find(96), "last_layer2_conv.conv.weight");
        assert_eq!(find(104), "last_layer2.5.conv.weight");
        // Shortcut, route, upsample and yolo blocks have no conv.
        for b in [4, 8, 11, 36, 61, 74, 82, 83, 85, 86, 94, 95, 97, 98, 106] {
            assert!(t.iter().all(|s| s.block != b), "block {b}");
        }
        // Darknet's yolov3.weights for 80 classes is 248,007,048 bytes: 20 header bytes.
        let floats: usize = t.iter().map(ConvSlot::floats).sum();
        assert_eq!(floats * 4 + 20, 248_007_048);
    }

    #[test]
    fn timm_names() {
        assert_eq!(
            timm_mobilenetv2_name("blocks.0.0.conv_dw.weight").unwrap(),
            "features.1.conv.0.0.weight"
        );
        assert_eq!(
            timm_mobilenetv2_name("blocks.1.0.conv_pw.weight").unwrap(),
            "features.2.conv.0.0.weight"
        );
        assert_eq!(
            timm_mobilenetv2_name("blocks.6.0.bn3.running_var").unwrap(),
            "features.17.conv.3.running_var"
        );
        assert_eq!(
            timm_mobilenetv2_name("bn2.bias").unwrap(),
            "features.18.1.bias"
        );
        assert!(timm_mobilenetv2_name("blocks.7.0.bn1.weight").is_none());
        assert!(timm_mobilenetv2_name("blocks.0.0.conv_pwl.weight").is_none());
    }
}
