//! Model loading for `yolo-cli run`: weights, classes, anchors and the device.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device};
use clap::ValueEnum;
use nn_blocks::Precision;
use yolov3_head::{Anchors, BackboneKind, ClassNames, YoloBody, YoloConfig};

/// The name of the default weights of a backbone, as `yolo-cli download` (and
/// `cargo xtask download-weights`) takes it.
pub fn default_weights_name(backbone: BackboneKind) -> &'static str {
    match backbone {
        BackboneKind::Darknet53 => "darknet53-coco",
        BackboneKind::MobileNetV2 => "mobilenetv2-voc",
    }
}

/// Where `cargo xtask download-weights` puts the default weights of `backbone` in a
/// checkout (relative to the current directory); `yolo-cli run` tries it first.
pub fn default_weights_path(backbone: BackboneKind) -> PathBuf {
    PathBuf::from(format!(
        "model_data/weights/{}.safetensors",
        default_weights_name(backbone)
    ))
}

/// The weights file to use: `--weights`, or the default one of `backbone`.
///
/// The default is `NAME.safetensors` in `weights_dir` (`--weights-dir` or
/// `YOLO_RS_WEIGHTS_DIR`) when one is given; otherwise `model_data/weights/` of the
/// current directory (a checkout) when the file is there, else the user's weights
/// directory ([`crate::weights_dir`]). A missing default that has a download source
/// (`darknet53-coco`) is fetched into that directory first, through the same code as
/// `yolo-cli download` (unless `HF_HUB_OFFLINE=1`); if that fails, the error says which
/// command to run.
pub fn resolve_weights(
    arg: Option<&Path>,
    backbone: BackboneKind,
    weights_dir: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg {
        check_weights_file(p)?;
        return Ok(p.to_path_buf());
    }
    let name = default_weights_name(backbone);
    if weights_dir.is_none() {
        let local = default_weights_path(backbone);
        if local.is_file() {
            return Ok(local);
        }
    }
    let dir = crate::weights_dir::resolve(weights_dir)?;
    let path = yolo_weights::manifest::weights_path(&dir, name);
    if path.is_file() {
        return Ok(path);
    }
    let hint = format!(
        "no weights at {}: run `{}` or pass --weights FILE",
        path.display(),
        crate::weights_dir::download_command(name, &dir)
    );
    let Ok(spec) = yolo_weights::lookup(name) else {
        // No public weights exist for the MobileNetV2 detector: it has to be trained.
        anyhow::bail!(
            "no weights at {}: there are no public weights for the {backbone} detector; train one with `yolo-cli train` and pass --weights FILE",
            path.display()
        );
    };
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
    let opts = yolo_weights::download::DownloadOptions {
        out_dir: dir,
        offline,
        progress: true,
        ..Default::default()
    };
    if !offline {
        eprintln!("{} is missing: downloading {name} ...", path.display());
    }
    match yolo_weights::download::install(&spec, &opts) {
        Ok(installed) if installed.path.is_file() => Ok(installed.path),
        Ok(_) => anyhow::bail!("{hint}"),
        Err(e) => Err(anyhow::Error::new(e).context(hint)),
    }
}

/// Fails unless `path` is a file that can be looked at, saying what it is instead: missing,
/// a directory, or unreadable metadata.
fn check_weights_file(path: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => anyhow::bail!(
            "--weights {} is a directory, not a weights file: pass the .safetensors (or .pth, .weights) file in it",
            path.display()
        ),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("no weights at {}: the file does not exist", path.display())
        }
        Err(e) => Err(anyhow::Error::new(e)
            .context(format!("cannot read weights {}", path.display()))),
    }
}

const COCO_FILE: &str = "model_data/coco_classes.txt";
const VOC_FILE: &str = "model_data/voc_classes.txt";

/// `--classes FILE`, or the backbone's default list: `model_data/coco_classes.txt`
/// (darknet53) or `model_data/voc_classes.txt` (mobilenetv2) from the current
/// directory when it is there, the copy built into the binary otherwise. Returns the
/// names and where they came from.
pub fn resolve_classes(
    arg: Option<&Path>,
    backbone: BackboneKind,
) -> anyhow::Result<(ClassNames, String)> {
    if let Some(p) = arg {
        let names = ClassNames::from_file(p)?;
        return Ok((names, p.display().to_string()));
    }
    let file = match backbone {
        BackboneKind::Darknet53 => COCO_FILE,
        BackboneKind::MobileNetV2 => VOC_FILE,
    };
    if Path::new(file).is_file() {
        return Ok((ClassNames::from_file(Path::new(file))?, file.to_string()));
    }
    let names = match backbone {
        BackboneKind::Darknet53 => ClassNames::coco(),
        BackboneKind::MobileNetV2 => ClassNames::voc(),
    };
    Ok((names, format!("built-in {file}")))
}

/// `--anchors FILE`, or the YOLOv3 anchors.
pub fn resolve_anchors(arg: Option<&Path>) -> anyhow::Result<Anchors> {
    Ok(match arg {
        Some(p) => Anchors::from_file(p)?,
        None => Anchors::yolov3(),
    })
}

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    /// The CPU.
    Cpu,
    /// The first CUDA GPU (needs a build with `--features cuda`).
    Cuda,
    /// The first Metal GPU (needs a build with `--features metal`).
    Metal,
}

/// The device asked for, or the best one built in (CUDA, then Metal, then the CPU).
pub fn select_device(choice: Option<DeviceChoice>) -> anyhow::Result<Device> {
    match choice {
        Some(DeviceChoice::Cpu) => Ok(Device::Cpu),
        Some(DeviceChoice::Cuda) => Device::new_cuda(0).context(
            "--device cuda: no CUDA device (this yolo-cli needs building with `--features cuda`)",
        ),
        Some(DeviceChoice::Metal) => Device::new_metal(0).context(
            "--device metal: no Metal device (this yolo-cli needs building with `--features metal`)",
        ),
        None => {
            if cfg!(feature = "cuda") {
                if let Ok(d) = Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            if cfg!(feature = "metal") {
                if let Ok(d) = Device::new_metal(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
    }
}

/// Loads weights into a YOLOv3 body. Errors name the file.
///
/// The precision is `requested` (`--precision`), else the file's: an int8 file
/// (written by `yolo-cli quantize`) runs in int8 and refuses any other precision, and
/// int8 on an `f32` file is refused with the command that quantises it. `cfg`'s own
/// precision is ignored; its `calibrate` is kept.
///
/// The project's safetensors (reference PyTorch names) load directly, with the
/// BatchNorm epsilon recorded in their metadata (1e-6 for darknet imports, 1e-5 when
/// absent); any other checkpoint `yolo-cli convert` reads (`.pth`, darknet `.weights`,
/// candle-yolo-v3 or timm safetensors) is converted in memory first.
pub fn load_model(
    path: &Path,
    cfg: &YoloConfig,
    requested: Option<Precision>,
    device: &Device,
) -> anyhow::Result<YoloBody> {
    let canonical = match yolo_weights::convert::detect_format(path) {
        Ok(yolo_weights::SourceFormat::Safetensors) => {
            yolo_weights::load_canonical(path, device).ok()
        }
        _ => None,
    };
    let (tensors, meta) = match canonical {
        Some(loaded) => (loaded.tensors, loaded.meta),
        None => {
            let opts = yolo_weights::ConvertOptions {
                backbone: Some(cfg.backbone),
                ..Default::default()
            };
            let converted = yolo_weights::convert_file(path, &opts)
                .with_context(|| format!("cannot read weights {}", path.display()))?;
            let tensors = converted
                .tensors
                .into_iter()
                .map(|(k, t)| Ok((k, t.to_device(device)?)))
                .collect::<candle_core::Result<_>>()?;
            (tensors, converted.meta)
        }
    };
    if meta.backbone != cfg.backbone {
        anyhow::bail!(
            "{} holds a {} model, not {}: pass --backbone {}",
            path.display(),
            meta.backbone,
            cfg.backbone,
            meta.backbone
        );
    }
    let precision = choose_precision(path, meta.precision, requested)?;
    let cfg = YoloConfig {
        bn_eps: meta.bn_eps,
        precision,
        ..cfg.clone()
    };
    // the unfolded tensors are freed layer by layer as BatchNorm is folded into the convs
    let vb = nn_blocks::weights::TakingBackend::var_builder(tensors, DType::F32, device);
    YoloBody::new(&cfg, vb).with_context(|| {
        format!(
            "cannot build the {} {} model ({} classes) from {}",
            cfg.precision,
            cfg.backbone,
            cfg.num_classes,
            path.display()
        )
    })
}

/// The precision to run `path` (whose metadata says `stored`) in, given `--precision`.
pub fn choose_precision(
    path: &Path,
    stored: Precision,
    requested: Option<Precision>,
) -> anyhow::Result<Precision> {
    match (stored, requested) {
        (Precision::Int8, None | Some(Precision::Int8)) => Ok(Precision::Int8),
        (Precision::Int8, Some(p)) => anyhow::bail!(
            "{} holds int8 weights (written by `yolo-cli quantize`): run it with --precision int8 \
             or without --precision; --precision {p} needs the f32 weights it was quantised from",
            path.display()
        ),
        (_, Some(Precision::Int8)) => anyhow::bail!(
            "--precision int8 needs an int8 weights file, and {} holds f32 weights: quantise it \
             first with `yolo-cli quantize --weights {} --calib DIR -o OUT.safetensors` (DIR: a \
             folder of representative images), then run OUT",
            path.display(),
            path.display()
        ),
        (_, requested) => Ok(requested.unwrap_or(Precision::F32)),
    }
}

/// Whether `err` (from [`load_model`]) says that the weights hold a head for another
/// number of classes than the configuration, rather than that the file is unreadable or
/// incomplete.
pub fn is_class_count_mismatch(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<yolov3_head::Error>(),
            Some(yolov3_head::Error::ClassCountMismatch { .. })
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths_and_messages() {
        assert_eq!(
            default_weights_path(BackboneKind::Darknet53),
            PathBuf::from("model_data/weights/darknet53-coco.safetensors")
        );
        assert_eq!(
            default_weights_path(BackboneKind::MobileNetV2),
            PathBuf::from("model_data/weights/mobilenetv2-voc.safetensors")
        );
        let e = resolve_weights(
            Some(Path::new("/nonexistent/w.safetensors")),
            BackboneKind::Darknet53,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/w.safetensors"), "{e}");
        let dir = std::env::temp_dir();
        let e = resolve_weights(Some(&dir), BackboneKind::Darknet53, None).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
    }

    #[test]
    fn only_a_class_count_mismatch_counts_as_one() {
        let mismatch = yolov3_head::Error::ClassCountMismatch {
            tensor: "last_layer0.6.weight".into(),
            expected_channels: 24,
            found_channels: 75,
            anchors: 3,
            configured_classes: 3,
            weights_classes: 20,
        };
        let e = anyhow::Error::new(mismatch).context("building");
        assert!(is_class_count_mismatch(&e));
        let io = std::io::Error::other("bad header");
        let e = anyhow::Error::new(io).context("cannot read weights w.safetensors");
        assert!(!is_class_count_mismatch(&e));
    }

    #[test]
    fn default_classes_follow_the_backbone() {
        assert_eq!(
            resolve_classes(None, BackboneKind::Darknet53)
                .unwrap()
                .0
                .len(),
            80
        );
        assert_eq!(
            resolve_classes(None, BackboneKind::MobileNetV2)
                .unwrap()
                .0
                .len(),
            20
        );
    }

    #[test]
    fn cpu_is_always_there() {
        assert!(select_device(Some(DeviceChoice::Cpu)).unwrap().is_cpu());
        select_device(None).unwrap();
    }
}
