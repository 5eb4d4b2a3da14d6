//! Writes a synthetic detection set (squares, discs, triangles on textured backgrounds):
//! `cargo run --release -p yolo-train --example make_synthetic -- DIR [TRAIN VAL SIZE SEED]`
//! -> DIR/images/*.png, DIR/train.txt, DIR/val.txt, DIR/classes.txt.

use yolo_train::synthetic::{generate, SyntheticConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let dir = a
        .first()
        .ok_or("usage: make_synthetic DIR [TRAIN VAL SIZE SEED]")?;
    let num = |i: usize, d: u64| {
        a.get(i)
            .map(|s| s.parse::<u64>())
            .transpose()
            .map(|v| v.unwrap_or(d))
    };
    let cfg = SyntheticConfig {
        train: num(1, 400)? as usize,
        val: num(2, 100)? as usize,
        size: num(3, 128)? as u32,
        max_objects: 3,
        seed: num(4, 0)?,
    };
    generate(dir.as_ref(), &cfg)?;
    println!(
        "wrote {} training and {} validation images to {dir}",
        cfg.train, cfg.val
    );
    Ok(())
}
