//! Tensor files: named tensors in safetensors format, read and written for
//! checkpoints (model weights and optimizer moments). Files may store F32,
//! BF16 or F16; in memory they are f32 until a backend uploads them in the
//! dtype it computes with (bf16 and f16 values are exact in f32).

use crate::engine::dtype::{self, DType};
use crate::engine::Quantized;
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

/// Writes named tensors stored as `dtype` (rounded to nearest even).
pub fn save_safetensors_as(path: &Path, tensors: &[(String, Vec<usize>, &[f32])], dtype: DType) -> Result<()> {
    if dtype == DType::F32 {
        return save_safetensors(path, tensors);
    }
    let stored: Vec<_> = tensors.iter().map(|(n, s, d)| (n.clone(), s.clone(), Stored::Float(d, dtype))).collect();
    save_stored(path, &stored)
}

/// How one tensor goes into a file: f32 values rounded to a float dtype,
/// or quantized blocks as they are.
pub enum Stored<'a> {
    Float(&'a [f32], DType),
    Blocks(&'a Quantized),
}

/// The metadata key naming the block-quantized tensors of a file and their
/// dtypes (a JSON object): safetensors has no such dtypes, so their blocks
/// are stored as U8 tensors of `[rows, bytes per row]`.
const BLOCKS_KEY: &str = "ferrite.blocks";

/// Writes named tensors each stored its own way (see [`Stored`]).
pub fn save_stored(path: &Path, tensors: &[(String, Vec<usize>, Stored)]) -> Result<()> {
    let mut blocks = serde_json::Map::new();
    let encoded: Vec<(Dtype, Vec<usize>, std::borrow::Cow<[u8]>)> = tensors
        .iter()
        .map(|(name, shape, t)| match t {
            Stored::Float(d, DType::F32) => (Dtype::F32, shape.clone(), f32_bytes(d).into()),
            Stored::Float(d, dt) => {
                let mut half = vec![0u16; d.len()];
                dtype::encode16(d, &mut half, *dt);
                let st = if *dt == DType::BF16 { Dtype::BF16 } else { Dtype::F16 };
                (st, shape.clone(), half.iter().flat_map(|h| h.to_le_bytes()).collect::<Vec<u8>>().into())
            }
            Stored::Blocks(q) => {
                blocks.insert(name.clone(), q.dtype.name().into());
                let rows = shape[..shape.len() - 1].iter().product::<usize>().max(1);
                (Dtype::U8, vec![rows, q.bytes.len() / rows], q.bytes.as_slice().into())
            }
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&encoded)
        .map(|((n, ..), (dt, shape, bytes))| Ok((n.clone(), TensorView::new(*dt, shape.clone(), bytes)?)))
        .collect::<Result<_>>()?;
    let meta = (!blocks.is_empty())
        .then(|| HashMap::from([(BLOCKS_KEY.to_string(), serde_json::Value::Object(blocks).to_string())]));
    safetensors::serialize_to_file(views, meta, path).with_context(|| format!("cannot write {}", path.display()))
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
    Ok(load_safetensors_typed(path)?.0)
}

/// [`load_safetensors`], and the dtype the file stores its matrices in
/// (F32 when it has none, or mixes them). Block-quantized tensors are an
/// error here (Hugging Face files have none).
pub fn load_safetensors_typed(path: &Path) -> Result<(HashMap<String, (Vec<usize>, Vec<f32>)>, DType)> {
    let file = load_model_file(path)?;
    if let Some(name) = file.blocks.keys().min() {
        bail!("{}: tensor {name} is block-quantized; only ferrite checkpoints hold those", path.display());
    }
    Ok((file.tensors, file.stored))
}

/// A weights file read: every tensor as f32 values (block-quantized ones
/// widened, under their `[rows, cols]` shape), the dtype of the float
/// matrices, and the quantized tensors' blocks as stored.
pub struct ModelFile {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub stored: DType,
    pub blocks: HashMap<String, Quantized>,
    /// Each tensor's dtype as stored.
    pub dtypes: HashMap<String, DType>,
}

/// Reads a weights file that may hold block-quantized tensors (see [`save_stored`]).
pub fn load_model_file(path: &Path) -> Result<ModelFile> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("{} is not a valid safetensors file: {e}", path.display());
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(&e))?;
    let quantized: HashMap<String, String> = match meta.metadata().as_ref().and_then(|m| m.get(BLOCKS_KEY)) {
        Some(json) => serde_json::from_str(json).map_err(|e| bad(&format!("its {BLOCKS_KEY} metadata: {e}")))?,
        None => HashMap::new(),
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(&e))?;
    let (mut out, mut matrices, mut blocks, mut dtypes) = (HashMap::new(), Vec::new(), HashMap::new(), HashMap::new());
    for (name, view) in st.tensors() {
        let b = view.data();
        let (data, dt): (Vec<f32>, DType) = match view.dtype() {
            Dtype::F32 => {
                (b.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(), DType::F32)
            }
            Dtype::BF16 => (
                b.chunks_exact(2).map(|b| dtype::f32_from_bf16(u16::from_le_bytes([b[0], b[1]]))).collect(),
                DType::BF16,
            ),
            Dtype::F16 => {
                (b.chunks_exact(2).map(|b| dtype::f32_from_f16(u16::from_le_bytes([b[0], b[1]]))).collect(), DType::F16)
            }
            Dtype::U8 if quantized.contains_key(&name) => {
                let q = blocks_of(path, &name, &quantized[&name], view.shape(), b)?;
                out.insert(name.clone(), (vec![view.shape()[0], q.len() / view.shape()[0]], q.to_f32()));
                dtypes.insert(name.clone(), q.dtype);
                blocks.insert(name, q);
                continue;
            }
            other => bail!("{}: tensor {name} is {other:?}; ferrite reads F32, BF16 and F16", path.display()),
        };
        if view.shape().len() >= 2 {
            matrices.push(dt);
        }
        dtypes.insert(name.clone(), dt);
        out.insert(name, (view.shape().to_vec(), data));
    }
    if let Some(name) = quantized.keys().find(|n| !blocks.contains_key(*n)) {
        bail!("{}: its metadata names a quantized tensor {name} that is not a U8 tensor in it", path.display());
    }
    let stored = match matrices.split_first() {
        Some((first, rest)) if rest.iter().all(|d| d == first) => *first,
        _ => DType::F32,
    };
    Ok(ModelFile { tensors: out, stored, blocks, dtypes })
}

/// Checks a U8 tensor `[rows, bytes]` as blocks of `dtype`: a known
/// quantized dtype, whole blocks, finite scales.
fn blocks_of(path: &Path, name: &str, dtype: &str, shape: &[usize], bytes: &[u8]) -> Result<Quantized> {
    let dt: DType = dtype.parse().ok().filter(|d: &DType| d.is_quantized()).with_context(|| {
        format!("{}: tensor {name} is of quantized type {dtype:?}, which ferrite does not know", path.display())
    })?;
    if shape.len() != 2 || shape[0] == 0 || !shape[1].is_multiple_of(dt.block_bytes()) {
        bail!("{}: tensor {name} of shape {shape:?} is not rows of whole {dt} blocks", path.display());
    }
    let q = Quantized { dtype: dt, bytes: bytes.to_vec() };
    if let Some(i) = q.to_f32().iter().position(|x| !x.is_finite()) {
        bail!("{}: tensor {name} holds a non-finite value at index {i}: the checkpoint is corrupt", path.display());
    }
    Ok(q)
}

/// Takes tensor `key` out of a loaded file (`file` names it in errors): it
/// must be there, of `shape`, and finite.
pub fn take_tensor(
    tensors: &mut HashMap<String, (Vec<usize>, Vec<f32>)>,
    key: &str,
    shape: &[usize],
    file: &dyn std::fmt::Display,
) -> Result<Vec<f32>> {
    let (got, data) = tensors.remove(key).with_context(|| format!("{file}: missing tensor {key}"))?;
    if got != shape {
        bail!("{file}: tensor {key} has shape {got:?}, expected {shape:?}");
    }
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        bail!("{file}: tensor {key} holds {} at index {i}: the checkpoint is corrupt", data[i]);
    }
    Ok(data)
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
        .map(|s| take_tensor(&mut tensors, &format!("{prefix}{}", s.name), &s.shape, &file.display()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::dtype::round_to;

    #[test]
    fn every_dtype_round_trips_as_its_rounded_values() {
        let dir = std::env::temp_dir().join(format!("ferrite-tensors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (w, b): (Vec<f32>, Vec<f32>) = ((0..12).map(|i| i as f32 * 0.37 - 2.0).collect(), vec![0.1, -3.3]);
        let tensors = [("w".to_string(), vec![3, 4], &w[..]), ("b".to_string(), vec![2], &b[..])];
        for dtype in DType::ALL {
            let file = dir.join(format!("{dtype}.safetensors"));
            save_safetensors_as(&file, &tensors, dtype).unwrap();
            let (got, stored) = load_safetensors_typed(&file).unwrap();
            assert_eq!(stored, dtype);
            for (name, _, data) in &tensors {
                let want: Vec<f32> = data.iter().map(|&x| round_to(x, dtype)).collect();
                assert_eq!(got[name].1, want, "{dtype} {name}");
            }
            let bytes = std::fs::metadata(&file).unwrap().len() as usize;
            assert!(bytes >= 14 * dtype.bytes() && bytes < 14 * dtype.bytes() + 200, "{dtype}: {bytes} bytes");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
