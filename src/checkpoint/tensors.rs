//! Tensor files: named f32 tensors in safetensors format, read and
//! written for checkpoints (model weights and optimizer moments).

use crate::model::params::ParamSpec;
use anyhow::{bail, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// Writes named f32 tensors to a safetensors file (not atomically: callers
/// write into a temporary directory that is renamed into place).
pub fn save_safetensors(path: &Path, tensors: &[(String, Vec<usize>, &[f32])]) -> Result<()> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), f32_bytes(d))?)))
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, None, path).with_context(|| format!("cannot write {}", path.display()))
}

/// The bytes of f32 values, which safetensors stores little-endian: a view,
/// not a copy, so saving a large model needs no second copy of it.
#[cfg(target_endian = "little")]
fn f32_bytes(data: &[f32]) -> &[u8] {
    // SAFETY: any f32 is 4 initialised bytes; u8 has alignment 1, and the
    // length covers exactly the same memory.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

/// Reads every tensor of a safetensors file as f32, with its shape.
pub fn load_safetensors(path: &Path) -> Result<HashMap<String, (Vec<usize>, Vec<f32>)>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a valid safetensors file: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!("{}: tensor {name} is {:?}, expected F32", path.display(), view.dtype());
        }
        let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        out.insert(name, (view.shape().to_vec(), data));
    }
    Ok(out)
}

/// Picks the tensors of `specs` out of a loaded file. A file that does not
/// match its configuration is an error, whichever way it differs: a
/// missing tensor, one of another shape, one left over (the config
/// describes a different model), or values that are not finite.
pub fn take_params(
    specs: &[ParamSpec],
    mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    prefix: &str,
    file: &Path,
) -> Result<Vec<Vec<f32>>> {
    let params = specs
        .iter()
        .map(|s| {
            let key = format!("{prefix}{}", s.name);
            let (shape, data) =
                tensors.remove(&key).with_context(|| format!("{}: missing tensor {key}", file.display()))?;
            if shape != s.shape {
                bail!("{}: tensor {key} has shape {shape:?}, expected {:?}", file.display(), s.shape);
            }
            if let Some(i) = data.iter().position(|x| !x.is_finite()) {
                bail!("{}: tensor {key} holds {} at index {i}: the checkpoint is corrupt", file.display(), data[i]);
            }
            Ok(data)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut extra: Vec<&String> = tensors.keys().collect();
    extra.sort();
    if let Some(first) = extra.first() {
        bail!(
            "{}: {} tensor(s) the configuration does not describe, e.g. {first}: config.json does not match the weights",
            file.display(),
            extra.len()
        );
    }
    Ok(params)
}
