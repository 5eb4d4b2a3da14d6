//! A `VarBuilder` backend that records what a model reads.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

/// One read: tensor name and shape.
type Entry = (String, Vec<usize>);

/// The names and shapes a model read, in order.
#[derive(Debug, Clone, Default)]
pub struct ReadLog(Arc<Mutex<Vec<Entry>>>);

impl ReadLog {
    /// A snapshot of the recorded `(name, shape)` pairs.
    pub fn entries(&self) -> Vec<(String, Vec<usize>)> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Total number of elements read.
    pub fn numel(&self) -> usize {
        self.entries()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    fn record(&self, name: &str, shape: &[usize]) {
        if let Ok(mut v) = self.0.lock() {
            v.push((name.to_string(), shape.to_vec()));
        }
    }
}

/// Wraps a backend and records every successful read in a [`ReadLog`].
pub struct RecordingBackend<B> {
    inner: B,
    log: ReadLog,
}

impl<B: SimpleBackend> RecordingBackend<B> {
    /// Wraps `inner`; the returned log fills as the model loads.
    pub fn new(inner: B) -> (Self, ReadLog) {
        let log = ReadLog::default();
        (
            Self {
                inner,
                log: log.clone(),
            },
            log,
        )
    }
}

impl<B: SimpleBackend> SimpleBackend for RecordingBackend<B> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let t = self.inner.get(s, name, h, dtype, dev)?;
        self.log.record(name, t.dims());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = self.inner.get_unchecked(name, dtype, dev)?;
        self.log.record(name, t.dims());
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}
