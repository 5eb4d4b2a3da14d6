//! Weight sources beyond candle's own.
//!
//! - [`SyntheticWeights`]: deterministic weights from a closed-form function of the
//!   tensor name and index, identical to `tools/reference/make_golden.py`, so parity
//!   tests rebuild the reference's weights without shipping them.
//! - [`RecordingBackend`]: wraps any backend and records every tensor a model reads,
//!   to check names and shapes against the PyTorch `state_dict` and count parameters.
//! - [`TakingBackend`]: hands each tensor over as the model reads it, so that folding
//!   BatchNorm at load time does not keep the unfolded weights alive.

mod recording;
mod synthetic;
mod taking;

pub use recording::{ReadLog, RecordingBackend};
pub use synthetic::{synthetic_input, synthetic_values, SyntheticWeights};
pub use taking::TakingBackend;
