//! Distillation in the SDK: the loss-curve picture of a run, and the evaluation of a distilled
//! student against its teacher (held-out feature agreement through the student's heads, and
//! the stereo-correspondence score of both models, the metric `eval-quant` uses).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dinoedge_distill::data::{View, decode, render};
use dinoedge_distill::eval::{Agreement, AgreementSum, Heads};
use dinoedge_distill::teacher::{Alignment, OnlineTeacher, teacher_render};
use dinoedge_runtime::preprocess::{IMAGENET_MEAN, IMAGENET_STD};
use dinoedge_runtime::{Model, RunOptions, SessionOptions, Tensor, create_session};
use serde::Serialize;

use crate::embed::{Embedder, EmbedderOptions, InputMode};
use crate::error::{Error, Result};
use crate::plot::{Chart, Series, write_charts};
use crate::stereo::{self, StereoScore};

pub use dinoedge_distill::{DistillError, cache, student, train};

/// Reads metrics.jsonl lines as JSON objects (unparseable lines are skipped).
pub fn read_metrics(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Draws the loss terms (log scale) and, when logged, the held-out cosines of a run's
/// metrics.jsonl into `png` and into an SVG beside it (same name, `.svg`).
pub fn loss_plot(metrics: &Path, png: &Path) -> Result<()> {
    let rows = read_metrics(metrics)?;
    let series = |key: &str, name: &str| -> Option<Series> {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
            .collect();
        (points.iter().any(|p| p.1 != 0.0)).then(|| Series {
            name: name.into(),
            points,
        })
    };
    let losses: Vec<Series> = [
        ("loss", "total"),
        ("loss_cls", "cls"),
        ("loss_patch", "patch"),
        ("loss_gram", "gram"),
        ("loss_inter", "intermediate"),
    ]
    .iter()
    .filter_map(|(k, n)| series(k, n))
    .collect();
    let holdout: Vec<Series> = [
        ("holdout_patch_cos", "patch cos"),
        ("holdout_cls_cos", "cls cos"),
    ]
    .iter()
    .filter_map(|(k, n)| series(k, n))
    .collect();
    let mut charts = vec![Chart {
        title: "training loss".into(),
        x_label: "step".into(),
        y_label: "loss (log scale)".into(),
        log_y: true,
        series: losses,
    }];
    if !holdout.is_empty() {
        charts.push(Chart {
            title: "held-out cosine to the teacher (EMA student)".into(),
            x_label: "step".into(),
            y_label: "cosine".into(),
            log_y: false,
            series: holdout,
        });
    }
    write_charts(&charts, 1000, 420, png, &png.with_extension("svg"))
}

/// Options of [`evaluate`].
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Student input size (default: the size the student was trained at).
    pub size: Option<usize>,
    pub teacher_size: Option<usize>,
    /// Short side of the student's input for the stereo pairs; the teacher gets the size
    /// with the same grid. None: skip stereo.
    pub stereo_size: Option<usize>,
    pub threads: Option<usize>,
}

/// The evaluation of a student against its teacher.
#[derive(Clone, Debug, Serialize)]
pub struct DistillEval {
    pub student: PathBuf,
    pub teacher: PathBuf,
    pub align: Alignment,
    pub agreement: Agreement,
    pub unreadable: Vec<String>,
    /// (pair, student score, teacher score).
    pub stereo: Vec<(String, StereoScore, StereoScore)>,
    pub stereo_sizes: Option<(usize, usize)>,
}

/// Expands directories (recursively) into their image files.
pub fn expand_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let data = dinoedge_distill::data::Dataset::scan(p, 0.0, 1)?;
            out.extend(data.train.iter().map(|e| data.path(e)));
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Held-out agreement and stereo scores of a distilled student and its teacher.
pub fn evaluate(
    teacher_dir: &Path,
    student_dir: &Path,
    images: &[PathBuf],
    o: &EvalOptions,
) -> Result<DistillEval> {
    let heads = Heads::load(student_dir)?;
    let student = Arc::new(Model::load(student_dir)?);
    let teacher = Arc::new(Model::load(teacher_dir)?);
    if heads.student_dim != student.config().hidden_size()
        || heads.teacher_dim != teacher.config().hidden_size()
    {
        return Err(Error::InvalidArgument(format!(
            "the heads of {} map {} -> {} dims, but the student has {} and the teacher {}: wrong teacher?",
            student_dir.display(),
            heads.student_dim,
            heads.teacher_dim,
            student.config().hidden_size(),
            teacher.config().hidden_size()
        )));
    }
    let size = o.size.unwrap_or(student.config().image_size());
    let align = Alignment::new(student.config(), size, teacher.config(), o.teacher_size)?;
    let session_opts = SessionOptions {
        threads: o.threads,
        ..Default::default()
    };
    let mut t = OnlineTeacher::new(teacher.clone(), align.clone(), &[], &session_opts)?;
    let trender = teacher_render(&teacher, &align)?;
    let mut s = create_session(student.clone(), &session_opts)?;
    let mut sum = AgreementSum::default();
    let mut unreadable = Vec::new();
    for path in images {
        let (w, h, rgb) = match decode(path) {
            Ok(x) => x,
            Err(e) => {
                unreadable.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let view = View::center(w, h);
        let sp = render(&rgb, w, &view, size, IMAGENET_MEAN, IMAGENET_STD);
        let tp = render(&rgb, w, &view, trender.size, trender.mean, trender.std);
        let targets = t.targets(&tp, 1)?;
        let f = s.run(
            &Tensor::new(vec![1, 3, size, size], sp)?,
            &RunOptions::default(),
        )?;
        sum.add(
            heads.cosine_sums(&f.last.cls.data, &f.last.patches.data, &targets),
            1,
        );
    }
    if sum.finish().images == 0 && !images.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "none of the {} images could be read ({})",
            images.len(),
            unreadable.join("; ")
        )));
    }
    let mut stereo_scores = Vec::new();
    let mut stereo_sizes = None;
    if let Some(ss) = o.stereo_size {
        let grid = ss / student.config().patch_size();
        let ts = grid * teacher.config().patch_size();
        stereo_sizes = Some((grid * student.config().patch_size(), ts));
        let pairs = stereo::available_pairs()?;
        let mk = |m: &Arc<Model>, sz: usize| -> Result<Embedder> {
            Embedder::from_model(
                m.clone(),
                &EmbedderOptions {
                    session: session_opts.clone(),
                    mode: InputMode::Dense(sz),
                    capture_layers: vec![],
                },
            )
        };
        let (mut se, mut te) = (
            mk(&student, grid * student.config().patch_size())?,
            mk(&teacher, ts)?,
        );
        for pair in &pairs {
            stereo_scores.push((
                pair.name.clone(),
                stereo::evaluate(&mut se, pair)?,
                stereo::evaluate(&mut te, pair)?,
            ));
        }
    }
    Ok(DistillEval {
        student: student_dir.to_path_buf(),
        teacher: teacher_dir.to_path_buf(),
        align,
        agreement: sum.finish(),
        unreadable,
        stereo: stereo_scores,
        stereo_sizes,
    })
}
