//! Faults and resume: a non-finite loss stops training and leaves the last good checkpoint
//! as it was; a run that crashed after epoch 2 and was resumed ends with the same weights,
//! optimizer state and history as one that ran its 4 epochs straight through.

mod common;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use candle_core::{Device, Tensor};
use test_support::max_abs_diff_maps;
use yolo_train::dataset::Sample;
use yolo_train::optim::OptimizerKind;
use yolo_train::synthetic::CLASSES;
use yolo_train::{train, Error, Event, TrainConfig};
use yolov3_head::{Anchors, BackboneKind};

fn data(dir: &Path, train: usize, val: usize) -> (Vec<Sample>, Vec<Sample>) {
    common::synthetic_samples(dir, train, val, 7)
}

fn config(save_dir: &Path) -> TrainConfig {
    let classes = CLASSES.iter().map(|s| s.to_string()).collect();
    TrainConfig {
        input_wh: (64, 64),
        epochs: 4,
        freeze_epochs: 1,
        freeze_batch: 2,
        batch: 2,
        save_period: 0,
        eval_period: 0,
        seed: 3,
        fit_lr_to_batch: false,
        ..TrainConfig::new(BackboneKind::MobileNetV2, classes, save_dir)
            .with_optimizer(OptimizerKind::Adam)
    }
}

fn files(dir: &Path) -> HashMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (tr, va) = data(dir.path(), 4, 2);
    let out = dir.path().join("run");
    let mut cfg = config(&out);
    cfg.optimizer = OptimizerKind::Sgd;
    cfg.epochs = 1;
    cfg.freeze_epochs = 0;
    cfg.augment = None;
    train(&cfg, tr.clone(), va.clone(), &Device::Cpu, &mut |_| {}).unwrap();
    let before = files(&out.join("last"));
    let log_before = std::fs::read(out.join("log.jsonl")).unwrap();
    // resume into epoch 2 with an absurd learning rate: step 0 is still finite, its update
    // blows the weights up, and step 1's loss is not finite
    cfg.epochs = 2;
    cfg.resume = true;
    cfg.init_lr = 1e30;
    let mut steps = Vec::new();
    let e = train(&cfg, tr, va, &Device::Cpu, &mut |e| {
        if let Event::Step { step, .. } = e {
            steps.push(*step)
        }
    })
    .unwrap_err();
    assert!(matches!(e, Error::NonFiniteLoss { epoch: 2, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("the loss is not finite (")
            && msg.contains("at epoch 2, step ")
            && msg.ends_with("training stopped; the last good checkpoint is left as it was"),
        "{msg}"
    );
    assert!(steps.len() <= 2, "{steps:?}");
    // the checkpoint of epoch 1 is byte for byte what it was, and nothing half-written is left
    assert_eq!(files(&out.join("last")), before);
    assert_eq!(std::fs::read(out.join("log.jsonl")).unwrap(), log_before);
    for leftover in ["last.tmp", "last.old", "best.tmp", "best.old"] {
        assert!(!out.join(leftover).exists(), "{leftover} left behind");
    }
}

#[test]
fn resumed_run_matches_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (tr, va) = data(dir.path(), 2, 2);
    // straight through: 4 epochs (1 frozen), augmentation on
    let a = dir.path().join("a");
    let hist_a = train(
        &config(&a),
        tr.clone(),
        va.clone(),
        &Device::Cpu,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(hist_a.len(), 4);
    // the same run crashing right after epoch 2 was saved ...
    let b = dir.path().join("b");
    let cfg_b = config(&b);
    let crashed = catch_unwind(AssertUnwindSafe(|| {
        train(&cfg_b, tr.clone(), va.clone(), &Device::Cpu, &mut |e| {
            if let Event::EpochEnd(r) = e {
                if r.epoch == 2 {
                    panic!("simulated crash after epoch 2");
                }
            }
        })
    }));
    assert!(crashed.is_err());
    // ... and resumed
    let cfg_b = TrainConfig {
        resume: true,
        ..cfg_b
    };
    let hist_b = train(&cfg_b, tr, va, &Device::Cpu, &mut |_| {}).unwrap();
    assert_eq!(hist_b.len(), 4);
    for (x, y) in hist_a.iter().zip(&hist_b) {
        assert_eq!(x.epoch, y.epoch);
        assert_eq!(x.frozen, y.frozen);
        let tol = 1e-5 * x.loss.abs().max(1.0);
        assert!(
            (x.loss - y.loss).abs() <= tol && (x.val_loss - y.val_loss).abs() <= tol,
            "epoch {}: {x:?} vs {y:?}",
            x.epoch
        );
    }
    let dw = max_abs_diff_maps(
        &tensors(&a.join("last/weights.safetensors")),
        &tensors(&b.join("last/weights.safetensors")),
    );
    let dopt = max_abs_diff_maps(
        &tensors(&a.join("last/optimizer.safetensors")),
        &tensors(&b.join("last/optimizer.safetensors")),
    );
    assert!(
        dw <= 1e-6 && dopt <= 1e-6,
        "weights differ by {dw}, optimizer state by {dopt}"
    );
}

#[test]
fn the_seed_fixes_the_initial_model() {
    let cfg = yolov3_head::YoloConfig::new(BackboneKind::MobileNetV2, 3);
    let dump = |seed: u64| -> HashMap<String, Tensor> {
        let (vm, _) = yolo_train::trainer::build_train_model(&cfg, &Device::Cpu, seed).unwrap();
        let data = vm.data().lock().unwrap();
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
            .collect()
    };
    let (a, b, c) = (dump(5), dump(5), dump(6));
    assert_eq!(max_abs_diff_maps(&a, &b), 0.0);
    assert!(max_abs_diff_maps(&a, &c) > 0.0);
    // conv biases (the head's last convs) within PyTorch's default bound, BN biases zero
    let bias = a["last_layer0.6.bias"].to_vec1::<f32>().unwrap();
    let bound = 1.0 / (a["last_layer0.6.weight"].dims()[1] as f32).sqrt();
    assert!(bias.iter().all(|v| v.abs() <= bound) && bias.iter().any(|&v| v != 0.0));
    assert!(a["last_layer0.0.bn.running_var"]
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|&v| v == 1.0));
}

#[test]
fn stop_flag_ends_the_run_keeping_finished_epochs_and_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let (tr, va) = data(dir.path(), 4, 2);
    let out = dir.path().join("run");
    let mut cfg = config(&out);
    cfg.epochs = 3;
    cfg.freeze_epochs = 0;
    cfg.augment = None;
    // anchors of the data's own scale, as `yolo-cli anchors` would write them
    let pairs: Vec<(f32, f32)> = (1..=9).map(|i| (4.0 * i as f32, 3.0 * i as f32)).collect();
    cfg.anchors = Anchors::new(pairs.clone()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    cfg.stop = Some(stop.clone());
    // raise the flag (as Ctrl-C does) during epoch 2
    let e = train(&cfg, tr.clone(), va.clone(), &Device::Cpu, &mut |e| {
        if let Event::Step { step: 0, .. } = e {
            if out.join("last").exists() {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Interrupted {
                epoch: 2,
                saved_epoch: Some(1),
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("epochs up to 1 are saved in") && msg.contains("--resume"),
        "{msg}"
    );
    let state = std::fs::read_to_string(out.join("last/state.json")).unwrap();
    assert!(state.contains("\"epoch\": 1"), "{state}");
    // the checkpoint carries the run's anchors in the file format `run --anchors` reads
    let saved = Anchors::from_file(&out.join("last/anchors.txt")).unwrap();
    assert_eq!(saved.pairs(), &pairs[..]);

    // resuming with other anchors is refused, naming the checkpoint
    let mut other = config(&out);
    other.epochs = 3;
    other.freeze_epochs = 0;
    other.resume = true;
    let e = train(&other, tr.clone(), va.clone(), &Device::Cpu, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("state.json") && e.contains("anchors") && e.contains("4,3, 8,6"),
        "{e}"
    );
    // with the same anchors it finishes the run
    cfg.stop = None;
    cfg.resume = true;
    let hist = train(&cfg, tr, va, &Device::Cpu, &mut |_| {}).unwrap();
    assert_eq!(hist.len(), 3);
}
