//! Pictures a person can read, drawn with plotters on an in-memory bitmap, text in DejaVu
//! Sans embedded in the binary, written as PNG atomically:
//!
//! - `training`: `results.png` of a training run, redrawn after every epoch;
//! - `evaluation`: the precision/recall curves, AP and ground-truth bar charts and the
//!   confusion matrix of an evaluation;
//! - `canvas`: the drawing surface, the font and the PNG file they share;
//! - `categories`: an axis of class names.

mod canvas;
mod categories;
mod evaluation;
mod training;

pub use evaluation::{write_eval_plots, EvalPlotInput, CONFUSION_IOU, PR_SIZE};
pub use training::{plot_results, RESULTS_GRID, RESULTS_SIZE};
