//! `DecodeBox.decode_box` of bubbliiiing/yolo3-pytorch `utils/utils_bbox.py`, as tensor
//! ops on the heads' device.

use candle_core::{DType, Tensor, D};

use crate::anchors::Anchors;
use crate::{Error, Result};

/// Decodes the three raw heads into one `(B, N, 5 + C)` tensor, `N = sum(3 * h_i * w_i)`,
/// rows `[x, y, w, h, obj, cls_0 … cls_{C-1}]` with the box centre and size as fractions
/// of the network input and objectness and class scores as independent sigmoids.
///
/// Rows are ordered head by head (13x13, 26x26, 52x52 at 416), then anchor, row, column,
/// as the reference's `torch.cat(outputs, 1)`. `input_hw` is the network input
/// `(height, width)`; `mask[i]` lists the anchors of head `i`.
pub fn decode_heads(
    heads: &[&Tensor],
    anchors: &Anchors,
    mask: &[[usize; 3]; 3],
    num_classes: usize,
    input_hw: (usize, usize),
) -> Result<Tensor> {
    if heads.len() != mask.len() {
        return Err(Error::Config(format!(
            "{} heads given, the anchors mask has {}",
            heads.len(),
            mask.len()
        )));
    }
    let decoded = heads
        .iter()
        .zip(mask.iter())
        .map(|(head, m)| decode_head(head, anchors, m, num_classes, input_hw))
        .collect::<Result<Vec<_>>>()?;
    // 3 x (B, n_i, 5+C) -> (B, N, 5+C)
    Ok(Tensor::cat(&decoded, 1)?)
}

/// Decodes one head `(B, A*(5+C), H, W)` -> `(B, A*H*W, 5+C)`.
pub fn decode_head(
    head: &Tensor,
    anchors: &Anchors,
    mask: &[usize],
    num_classes: usize,
    input_hw: (usize, usize),
) -> Result<Tensor> {
    let (b, ch, gh, gw) = head.dims4()?;
    let a = mask.len();
    let attrs = 5 + num_classes;
    if ch != a * attrs {
        return Err(Error::Config(format!(
            "a head has {ch} channels, expected {a} anchors x (5 + {num_classes} classes) = {}",
            a * attrs
        )));
    }
    if let Some(&i) = mask.iter().find(|&&i| i >= anchors.len()) {
        return Err(Error::Config(format!(
            "the anchors mask uses anchor {i} but only {} anchors are given",
            anchors.len()
        )));
    }
    let dev = head.device();
    let (input_h, input_w) = (input_hw.0 as f64, input_hw.1 as f64);
    // Strides and scaled anchors in f64, as the reference's Python floats, then f32.
    let (stride_h, stride_w) = (input_h / gh as f64, input_w / gw as f64);
    let scaled: Vec<f32> = mask
        .iter()
        .flat_map(|&i| {
            let (aw, ah) = anchors.pairs()[i];
            [(aw as f64 / stride_w) as f32, (ah as f64 / stride_h) as f32]
        })
        .collect();
    let scaled = Tensor::from_vec(scaled, (1, a, 1, 1, 2), dev)?;
    let grid: Vec<f32> = (0..gh)
        .flat_map(|y| (0..gw).flat_map(move |x| [x as f32, y as f32]))
        .collect();
    let grid = Tensor::from_vec(grid, (1, 1, gh, gw, 2), dev)?;
    let scale = Tensor::from_vec(vec![gw as f32, gh as f32], (1, 1, 1, 1, 2), dev)?;

    // (B, A*(5+C), H, W) -> (B, A, 5+C, H, W) -> (B, A, H, W, 5+C)
    let p = head
        .to_dtype(DType::F32)?
        .reshape((b, a, attrs, gh, gw))?
        .permute((0, 1, 3, 4, 2))?
        .contiguous()?;
    // (B, A, H, W, 2): (sigmoid(t) + grid) / (W, H)
    let xy = candle_nn::ops::sigmoid(&p.narrow(D::Minus1, 0, 2)?)?
        .broadcast_add(&grid)?
        .broadcast_div(&scale)?;
    // (B, A, H, W, 2): exp(t) * anchor / stride / (W, H)
    let wh = p
        .narrow(D::Minus1, 2, 2)?
        .exp()?
        .broadcast_mul(&scaled)?
        .broadcast_div(&scale)?;
    // (B, A, H, W, 1+C): objectness and class scores
    let conf = candle_nn::ops::sigmoid(&p.narrow(D::Minus1, 4, 1 + num_classes)?)?;
    // (B, A, H, W, 5+C) -> (B, A*H*W, 5+C)
    Ok(Tensor::cat(&[xy, wh, conf], D::Minus1)?.reshape((b, a * gh * gw, attrs))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn decodes_one_cell_by_hand() {
        // One class, 2x2 grid, input 64x64 (stride 32); plant anchor 1 at (y=1, x=0).
        let attrs = 6;
        let mut v = vec![0f32; 3 * attrs * 4];
        let at = |anchor: usize, k: usize, y: usize, x: usize| (anchor * attrs + k) * 4 + y * 2 + x;
        v[at(1, 0, 1, 0)] = 1.0; // tx
        v[at(1, 1, 1, 0)] = -1.0; // ty
        v[at(1, 2, 1, 0)] = 0.5; // tw
        v[at(1, 3, 1, 0)] = -0.25; // th
        v[at(1, 4, 1, 0)] = 2.0; // obj
        v[at(1, 5, 1, 0)] = -3.0; // class 0
        let head = Tensor::from_vec(v, (1, 3 * attrs, 2, 2), &Device::Cpu).unwrap();
        let anchors = Anchors::yolov3();
        let out = decode_head(&head, &anchors, &[6, 7, 8], 1, (64, 64)).unwrap();
        assert_eq!(out.dims(), &[1, 12, 6]);
        let rows = out.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        let r = &rows[4 + 2]; // anchor 1, y 1, x 0
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let want = [
            (sig(1.0) + 0.0) / 2.0,
            (sig(-1.0) + 1.0) / 2.0,
            0.5f32.exp() * (156.0 / 32.0) / 2.0,
            (-0.25f32).exp() * (198.0 / 32.0) / 2.0,
            sig(2.0),
            sig(-3.0),
        ];
        for (g, w) in r.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{r:?} vs {want:?}");
        }
        // an untouched cell: centre of its cell, the anchor's size
        let r = &rows[3]; // anchor 0, y 1, x 1
        assert!((r[0] - 0.75).abs() < 1e-6 && (r[1] - 0.75).abs() < 1e-6);
        assert!((r[2] - 116.0 / 64.0).abs() < 1e-6 && (r[3] - 90.0 / 64.0).abs() < 1e-6);
    }

    #[test]
    fn refuses_wrong_channel_counts() {
        let head = Tensor::zeros((1, 17, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let e = decode_head(&head, &Anchors::yolov3(), &[6, 7, 8], 1, (64, 64)).unwrap_err();
        assert!(e.to_string().contains("17 channels"), "{e}");
    }
}
