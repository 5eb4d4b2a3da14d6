//! End-to-end tests of `yolo-cli anchors`, `voc-annotation`, and `train` / `eval` with
//! `--device cpu`, on files the tests write into temporary folders.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn cli(cwd: &Path) -> Command {
    let mut c = Command::cargo_bin("yolo-cli").unwrap();
    c.current_dir(cwd);
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An annotation file over three 100x100 images with boxes in three size groups, and one
/// bad line (line 4, an inverted box).
fn annotations(dir: &Path) -> PathBuf {
    let mut lines = Vec::new();
    for i in 0..3 {
        let img = dir.join(format!("{i}.png"));
        image::RgbImage::new(100, 100).save(&img).unwrap();
        let mut l = img.display().to_string();
        for (k, (w, h)) in [(5, 8), (6, 8), (20, 15), (21, 16), (60, 70), (62, 68)]
            .iter()
            .enumerate()
        {
            let x = k as i32 * 5;
            l.push_str(&format!(" {x},{x},{},{},0", x + w + i, x + h));
        }
        lines.push(l);
    }
    lines.push(format!("{} 30,30,10,40,0", dir.join("0.png").display()));
    let p = dir.join("train.txt");
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

#[test]
fn anchors_writes_a_file_run_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let ann = annotations(dir.path());
    let out = |name: &str| {
        let o = cli(dir.path())
            .args(["anchors", "--num-anchors", "9", "--seed", "4", "-o", name])
            .arg(&ann)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        o
    };
    let o = out("a/anchors.txt");
    let stdout = text(&o.stdout);
    let stderr = text(&o.stderr);
    assert!(stdout.contains("avg IoU (acc): "), "{stdout}");
    assert!(
        stderr.contains("train.txt:4:") && stderr.contains("inverted"),
        "{stderr}"
    );
    assert!(stderr.contains("18 boxes"), "{stderr}");
    let file = dir.path().join("a/anchors.txt");
    let anchors = yolov3_head::Anchors::from_file(&file).unwrap();
    assert_eq!(anchors.len(), 9);
    let areas: Vec<f32> = anchors.pairs().iter().map(|(w, h)| w * h).collect();
    assert!(areas.windows(2).all(|w| w[0] <= w[1]), "{areas:?}");
    // the same seed writes the same file
    out("b.txt");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(dir.path().join("b.txt")).unwrap()
    );
    // --strict refuses the file at the bad line
    let o = cli(dir.path())
        .args(["anchors", "--strict"])
        .arg(&ann)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("train.txt:4:"),
        "{}",
        text(&o.stderr)
    );
}

fn voc_xml(objects: &[(&str, u8)]) -> String {
    let mut s = String::from(
        "<annotation><size><width>64</width><height>48</height><depth>3</depth></size>",
    );
    for (name, diff) in objects {
        s.push_str(&format!(
            "<object><name>{name}</name><difficult>{diff}</difficult><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>40.7</xmax><ymax>30</ymax></bndbox></object>"
        ));
    }
    s + "</annotation>"
}

fn devkit(root: &Path, n: usize) -> PathBuf {
    let voc = root.join("VOCdevkit/VOC2007");
    for d in ["Annotations", "JPEGImages", "ImageSets/Main"] {
        std::fs::create_dir_all(voc.join(d)).unwrap();
    }
    for i in 0..n {
        std::fs::write(
            voc.join(format!("Annotations/{i:04}.xml")),
            voc_xml(&[("dog", 0), ("cat", 1), ("unicorn", 0)]),
        )
        .unwrap();
        image::RgbImage::new(64, 48)
            .save(voc.join(format!("JPEGImages/{i:04}.jpg")))
            .unwrap();
    }
    root.join("VOCdevkit")
}

#[test]
fn voc_annotation_writes_train_and_val() {
    let dir = tempfile::tempdir().unwrap();
    devkit(dir.path(), 20);
    std::fs::write(dir.path().join("classes.txt"), "cat\ndog\n").unwrap();
    let o = cli(dir.path())
        .args(["voc-annotation", "--classes", "classes.txt", "--seed", "3"])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("train 16, val 2, test 2"), "{stderr}");
    assert!(
        stderr.contains("class `unicorn` is not in the class list")
            && stderr.contains("unicorn (18)"),
        "{stderr}"
    );
    assert!(stdout.contains("dog        18"), "{stdout}");
    let train = std::fs::read_to_string(dir.path().join("2007_train.txt")).unwrap();
    assert_eq!(train.lines().count(), 16);
    let first = train.lines().next().unwrap();
    let (path, boxes) = first.split_once(' ').unwrap();
    assert!(
        Path::new(path).is_absolute() && path.ends_with(".jpg"),
        "{path}"
    );
    assert_eq!(boxes, "2,3,40,30,1");
    // the files train reads: every line parses, the images exist
    let ann = yolo_train::dataset::load_annotations(
        &dir.path().join("2007_val.txt"),
        2,
        yolo_train::dataset::BadLinePolicy::Refuse,
    )
    .unwrap();
    assert_eq!(ann.samples.len(), 2);
    // a malformed XML file stops the run and is named
    std::fs::write(
        dir.path().join("VOCdevkit/VOC2007/Annotations/0005.xml"),
        "<annotation><object>",
    )
    .unwrap();
    let o = cli(dir.path())
        .args([
            "voc-annotation",
            "--classes",
            "classes.txt",
            "--mode",
            "annotations",
        ])
        .args(["--sets", "train,val,test"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("0005.xml"), "{}", text(&o.stderr));
}

/// Two training and two validation images of 64x64 with one shape each, in `dir/data`.
fn tiny_synthetic_set(dir: &Path, seed: u64) {
    yolo_train::synthetic::generate(
        &dir.join("data"),
        &yolo_train::synthetic::SyntheticConfig {
            train: 2,
            val: 2,
            size: 64,
            max_objects: 1,
            seed,
        },
    )
    .unwrap();
}

#[test]
fn train_and_eval_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    tiny_synthetic_set(dir.path(), 1);
    let o = cli(dir.path())
        .args([
            "train",
            "--device",
            "cpu",
            "--input-size",
            "64",
            "--epochs",
            "1",
        ])
        .args(["--freeze-epochs", "0", "--batch", "2", "--save-dir", "run"])
        .args(["--train", "data/train.txt", "--val", "data/val.txt"])
        .args(["--classes", "data/classes.txt", "--eval-period", "0"])
        .output()
        .unwrap();
    let stderr = text(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains(", on cpu"), "{stderr}");
    let weights = dir.path().join("run/last/weights.safetensors");
    assert!(weights.is_file());
    // the epochs as a table and a picture
    let csv = std::fs::read_to_string(dir.path().join("run/results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    let png = image::open(dir.path().join("run/results.png")).unwrap();
    assert_eq!((png.width(), png.height()), (1500, 800));
    // `yolo-cli eval` of the run's weights on the validation set, with `extra` flags
    let eval = |extra: &[&str]| {
        cli(dir.path())
            .args(["eval", "--input-size", "64"])
            .args([
                "--annotations",
                "data/val.txt",
                "--classes",
                "data/classes.txt",
            ])
            .arg("--weights")
            .arg(&weights)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = eval(&["--device", "cpu", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(report.get("map50").is_some(), "{report}");
    // --plots: the pictures and tables of the evaluation
    let o = eval(&["--device", "cpu", "--plots", "plots", "--plot-conf", "0.25"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("files in plots"),
        "{}",
        text(&o.stderr)
    );
    let plots = dir.path().join("plots");
    for f in [
        "pr_curves/000_square.png",
        "pr_curves/001_disc.png",
        "pr_curves/002_triangle.png",
        "pr_curves.png",
        "ap_per_class.png",
        "ground_truth.png",
        "confusion_matrix.png",
    ] {
        let img = image::open(plots.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(img.width() >= 360 && img.height() >= 360, "{f}");
    }
    let ap = std::fs::read_to_string(plots.join("ap_per_class.csv")).unwrap();
    assert_eq!(ap.lines().count(), 1 + 3 + 1, "{ap}");
    assert!(ap.starts_with("class_id,class,gt,detections,tp,fp,precision,recall,f1,ap50,ap50_95\n"));
    let cm = std::fs::read_to_string(plots.join("confusion_matrix.csv")).unwrap();
    assert_eq!(cm.lines().count(), 1 + 4, "{cm}");
    // the ground truth of the validation set is all counted, once, in the matrix
    let gt_total: usize = ap
        .lines()
        .last()
        .unwrap()
        .split(',')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let in_matrix: usize = cm
        .lines()
        .skip(1)
        .flat_map(|l| {
            l.split(',')
                .skip(1)
                .take(3)
                .map(|v| v.parse::<usize>().unwrap())
        })
        .sum();
    assert_eq!(in_matrix, gt_total, "{cm}");
    // --precision as `run`'s: bf16 from the f32 checkpoint evaluates it as the f32 one
    // (same ground truth, a mAP in [0, 1]); int8 needs a quantised file
    let o = eval(&["--device", "cpu", "--json", "--precision", "bf16"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let bf16: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let map50 = bf16["map50"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&map50), "{bf16}");
    let gts = |r: &serde_json::Value| -> Vec<u64> {
        let classes = r["classes"].as_array().unwrap();
        classes
            .iter()
            .map(|c| c["num_gt"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(gts(&bf16), gts(&report));
    let o = eval(&["--device", "cpu", "--precision", "int8"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("yolo-cli quantize"),
        "{}",
        text(&o.stderr)
    );
    // a score out of range is refused, naming the flag
    let o = eval(&["--device", "cpu", "--plots", "plots", "--plot-conf", "2"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--plot-conf"),
        "{}",
        text(&o.stderr)
    );
    // a GPU that is not built in is refused with the flag named
    if !cfg!(feature = "cuda") {
        let o = eval(&["--device", "cuda"]);
        assert!(!o.status.success());
        assert!(
            text(&o.stderr).contains("--device cuda"),
            "{}",
            text(&o.stderr)
        );
    }
}

/// Ctrl-C (SIGINT) stops training before its next step: exit code 130, the finished
/// epochs saved with the run's anchors, and `--resume` named.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_training_keeping_finished_epochs() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    tiny_synthetic_set(dir.path(), 2);
    let anchors = "5,6, 8,9, 10,14, 15,12, 18,20, 22,25, 30,28, 35,40, 50,48\n";
    std::fs::write(dir.path().join("anchors.txt"), anchors).unwrap();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("yolo-cli"))
        .current_dir(dir.path())
        .args(["train", "--device", "cpu", "--input-size", "64"])
        .args(["--epochs", "1000", "--freeze-epochs", "0", "--batch", "2"])
        .args(["--train", "data/train.txt", "--val", "data/val.txt"])
        .args(["--classes", "data/classes.txt", "--eval-period", "0"])
        .args(["--anchors", "anchors.txt", "--save-dir", "run"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let state = dir.path().join("run/last/state.json");
    let t0 = Instant::now();
    while !state.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "no epoch finished in 10 min"
        );
        assert!(child.try_wait().unwrap().is_none(), "train exited early");
        std::thread::sleep(Duration::from_millis(100));
    }
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("Ctrl-C: stopping") && stderr.contains("continue with --resume"),
        "{stderr}"
    );
    let saved = std::fs::read_to_string(dir.path().join("run/last/anchors.txt")).unwrap();
    let parse = |t: &str| yolov3_head::Anchors::parse(t, "anchors").unwrap();
    assert_eq!(parse(&saved), parse(anchors));
    // nothing half-written is left
    assert!(!dir.path().join("run/last.tmp").exists());
}
