//! Choosing the backend: the one place that names each one. Commands are
//! written once, generic over [`Backend`] ([`OnDevice`]), and run on the
//! device the user picked (`--device`).

use super::cpu::Cpu;
use super::Backend;
use anyhow::{bail, Result};

/// A backend the user can pick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// This machine's CPU cores.
    #[default]
    Cpu,
}

impl Device {
    pub const NAMES: &'static str = "cpu";

    /// Runs `job` on this device's backend.
    pub fn run<J: OnDevice>(self, job: J) -> Result<J::Output> {
        match self {
            Device::Cpu => job.run(Cpu),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            _ => bail!("unknown device '{s}' (available: {})", Device::NAMES),
        }
    }
}

/// Work written once for every backend.
pub trait OnDevice {
    type Output;
    fn run<B: Backend>(self, be: B) -> Result<Self::Output>;
}

/// An error unless `bytes` fit in what the device has (`available`, when
/// known). `what` says what needs them and `hint` how to need less.
pub fn check_fits(bytes: usize, available: Option<u64>, what: &str, hint: &str) -> anyhow::Result<()> {
    const GIB: f64 = (1u64 << 30) as f64;
    match available {
        Some(free) if bytes as u64 > free => anyhow::bail!(
            "{what} needs {:.1} GiB but the machine has {:.1} GiB available; {hint}",
            bytes as f64 / GIB,
            free as f64 / GIB
        ),
        _ => Ok(()),
    }
}
