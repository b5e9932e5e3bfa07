//! The CPU backend's buffer: a vector of one [`DType`].
//!
//! f32 kernels see an f32 buffer as `[f32]` (through `Deref`); giving one a
//! buffer of another dtype is a bug in the caller and panics naming both.
//! The operations that take 16-bit buffers match on the variant; those that
//! read weights also take block-quantized ones (`Blocks`).

use crate::engine::dtype::{self, DType};
use crate::engine::quant;
use std::ops::{Deref, DerefMut};

#[derive(Clone, Debug, PartialEq)]
pub enum CpuBuf {
    F32(Vec<f32>),
    /// bfloat16 bit patterns.
    BF16(Vec<u16>),
    /// IEEE half bit patterns.
    F16(Vec<u16>),
    /// Block-quantized values ([`quant`]'s layouts) of a quantized dtype.
    Blocks(DType, Vec<u8>),
}

impl CpuBuf {
    pub fn dtype(&self) -> DType {
        match self {
            CpuBuf::F32(_) => DType::F32,
            CpuBuf::BF16(_) => DType::BF16,
            CpuBuf::F16(_) => DType::F16,
            CpuBuf::Blocks(dt, _) => *dt,
        }
    }

    /// Elements (not bytes).
    pub fn len(&self) -> usize {
        match self {
            CpuBuf::F32(v) => v.len(),
            CpuBuf::BF16(v) | CpuBuf::F16(v) => v.len(),
            CpuBuf::Blocks(dt, b) => b.len() / dt.block_bytes() * dt.block_len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `len` values from `offset`, as f32, appended to `out`.
    pub fn read_f32_into(&self, offset: usize, len: usize, out: &mut Vec<f32>) {
        match self {
            CpuBuf::F32(v) => out.extend_from_slice(&v[offset..offset + len]),
            CpuBuf::BF16(v) | CpuBuf::F16(v) => {
                let start = out.len();
                out.resize(start + len, 0.0);
                dtype::decode16(&v[offset..offset + len], &mut out[start..], self.dtype());
            }
            CpuBuf::Blocks(dt, b) => {
                // Whole blocks covering the range, widened, then the range.
                let bl = dt.block_len();
                let (first, last) = (offset / bl, (offset + len).div_ceil(bl));
                let mut wide = vec![0.0; (last - first) * bl];
                quant::dequantize(*dt, &b[first * dt.block_bytes()..last * dt.block_bytes()], &mut wide);
                out.extend_from_slice(&wide[offset - first * bl..][..len]);
            }
        }
    }

    /// `len` values from `offset`, as f32.
    pub fn read_f32(&self, offset: usize, len: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(len);
        self.read_f32_into(offset, len, &mut out);
        out
    }

    /// Row `r` of this `[_, out.len()]` matrix into `out` as f32 (`add`:
    /// added to it).
    #[inline]
    pub fn row_into(&self, r: usize, out: &mut [f32], add: bool) {
        let c = out.len();
        match self {
            CpuBuf::F32(v) if add => out.iter_mut().zip(&v[r * c..(r + 1) * c]).for_each(|(o, x)| *o += x),
            CpuBuf::F32(v) => out.copy_from_slice(&v[r * c..(r + 1) * c]),
            CpuBuf::BF16(v) | CpuBuf::F16(v) => {
                let (row, dt) = (&v[r * c..(r + 1) * c], self.dtype());
                for (o, &h) in out.iter_mut().zip(row) {
                    let x = if dt == DType::BF16 { dtype::f32_from_bf16(h) } else { dtype::f32_from_f16(h) };
                    *o = if add { *o + x } else { x };
                }
            }
            CpuBuf::Blocks(dt, b) => {
                // Rows are whole blocks (the quantizer made sure).
                let (bl, bb) = (dt.block_len(), dt.block_bytes());
                let row = &b[r * c / bl * bb..(r + 1) * c / bl * bb];
                let mut block = [0f32; quant::QK_K];
                for (o, blk) in out.chunks_mut(bl).zip(row.chunks_exact(bb)) {
                    quant::dequantize_block(*dt, blk, &mut block[..bl]);
                    for (o, &x) in o.iter_mut().zip(&block[..bl]) {
                        *o = if add { *o + x } else { x };
                    }
                }
            }
        }
    }

    /// Overwrites the first `data.len()` values, rounding to this dtype.
    pub fn write_f32(&mut self, data: &[f32]) {
        let dt = self.dtype();
        match self {
            CpuBuf::F32(v) => v[..data.len()].copy_from_slice(data),
            CpuBuf::BF16(v) | CpuBuf::F16(v) => dtype::encode16(data, &mut v[..data.len()], dt),
            CpuBuf::Blocks(dt, b) => {
                let q = quant::quantize(*dt, data);
                b[..q.len()].copy_from_slice(&q);
            }
        }
    }
}

impl From<Vec<f32>> for CpuBuf {
    fn from(v: Vec<f32>) -> CpuBuf {
        CpuBuf::F32(v)
    }
}

impl Deref for CpuBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            CpuBuf::F32(v) => v,
            other => panic!("an f32-only operation was given a {} buffer", other.dtype()),
        }
    }
}

impl DerefMut for CpuBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        match self {
            CpuBuf::F32(v) => v,
            other => panic!("an f32-only operation was given a {} buffer", other.dtype()),
        }
    }
}
