//! Training end to end on a few synthetic images: the loss falls well below its start,
//! checkpoints, log and plot are written, the weights load for inference, resume
//! continues, and annotation errors are reported.

mod common;

use candle_core::Device;

use yolo_train::optim::OptimizerKind;
use yolo_train::synthetic::CLASSES;
use yolo_train::{train, Event, TrainConfig};
use yolov3_head::BackboneKind;

#[test]
fn loss_falls_and_checkpoints_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (tr, va) = common::synthetic_samples(dir.path(), 4, 4, 5);
    let out = dir.path().join("run");
    let classes = CLASSES.iter().map(|s| s.to_string()).collect();
    let mut cfg = TrainConfig {
        input_wh: (64, 64),
        epochs: 8,
        freeze_epochs: 0,
        freeze_batch: 4,
        batch: 4,
        init_lr: 5e-3,
        save_period: 0,
        eval_period: 0,
        seed: 1,
        augment: None,
        fit_lr_to_batch: false,
        ..TrainConfig::new(BackboneKind::MobileNetV2, classes, &out)
            .with_optimizer(OptimizerKind::Adam)
    };
    let mut step_losses = Vec::new();
    let hist = train(&cfg, tr.clone(), va.clone(), &Device::Cpu, &mut |e| {
        if let Event::Step { means, .. } = e {
            step_losses.push(means[0]);
        }
    })
    .unwrap();
    assert_eq!(hist.len(), 8);
    let (first, last) = (hist[0].loss, hist[7].loss);
    assert!(
        last < 0.5 * first,
        "training loss {first} -> {last}: {hist:?}"
    );
    for f in [
        "last/weights.safetensors",
        "last/optimizer.safetensors",
        "last/state.json",
        "best/weights.safetensors",
        "log.jsonl",
        "results.csv",
        "results.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // the table has a row per epoch with the validation terms; the picture its size
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 8, "{csv}");
    assert!(csv.starts_with(
        "epoch,loss,loc,conf,cls,val_loss,val_loc,val_conf,val_cls,map50,map50_95,lr"
    ));
    assert!(hist
        .iter()
        .all(|r| r.val_loc.is_some() && r.val_cls.is_some()));
    let png = image::open(out.join("results.png")).unwrap();
    assert_eq!((png.width(), png.height()), yolo_train::plot::RESULTS_SIZE);
    assert_eq!(
        std::fs::read_to_string(out.join("log.jsonl"))
            .unwrap()
            .lines()
            .count(),
        8
    );
    // the weights load as an inference model by name
    let tensors =
        candle_core::safetensors::load(out.join("last/weights.safetensors"), &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &Device::Cpu);
    yolov3_head::YoloBody::new(
        &yolov3_head::YoloConfig::new(BackboneKind::MobileNetV2, 3),
        vb,
    )
    .unwrap();
    // resume: two more epochs continue the history
    cfg.epochs = 10;
    cfg.resume = true;
    let hist2 = train(&cfg, tr, va, &Device::Cpu, &mut |_| {}).unwrap();
    assert_eq!(hist2.len(), 10);
    // the first 8 records come back from the checkpoint (lr through JSON may differ in the last bit)
    for (a, b) in hist2[..8].iter().zip(&hist) {
        assert_eq!((a.epoch, a.loss, a.val_loss), (b.epoch, b.loss, b.val_loss));
    }
    assert!(hist2[9].loss.is_finite() && hist2[9].epoch == 10);
}
