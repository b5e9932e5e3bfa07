//! Communication between the processes of a data-parallel run: each
//! process (rank) trains on its share of every batch and the gradients are
//! summed across them before one identical update. [`Comm`] is what the
//! training loop sees; [`Single`] is a run of one process (every operation
//! is a no-op), [`mpi::Mpi`] runs over MPI (`mpirun -np N`, cargo feature
//! `mpi`), and a GPU backend would add NCCL behind the same trait.

use anyhow::{bail, Result};

/// Collective operations: every rank must call them in the same order.
pub trait Comm {
    /// This process's index, `0..size`.
    fn rank(&self) -> usize;
    /// Processes in the run.
    fn size(&self) -> usize;
    /// Element-wise sum over all ranks, in place (every rank gets the sum).
    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<()>;
    /// [`Self::all_reduce_sum`] for f64 (losses, counts, flags).
    fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()>;
    /// `data` on every rank becomes rank `root`'s.
    fn broadcast(&self, data: &mut [f32], root: usize) -> Result<()>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Ends every process of the run (a failure on this rank), after this
    /// rank's error has been printed: the others would wait for it forever.
    fn abort(&self, code: i32) -> !;
    /// The implementation, for logs ("single process", "MPI: Open MPI ...").
    fn describe(&self) -> String;
    /// A clean end of the run (MPI: finalize when dropped, not abort).
    fn finish(&self) {}
}

/// A run of one process.
pub struct Single;

impl Comm for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32], _: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        "single process".into()
    }
}

/// The processes a launcher (mpirun, srun) says this run has, if any.
pub fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

/// The communicator of this process: MPI's world when started by an MPI
/// launcher (and built with the `mpi` feature), else [`Single`].
pub fn from_environment() -> Result<Box<dyn Comm>> {
    let size = launched_size();
    #[cfg(feature = "mpi")]
    if size.is_some() {
        return Ok(Box::new(mpi::Mpi::init()?));
    }
    match size {
        Some(n) if n > 1 => bail!(
            "started as one of {n} MPI processes, but this ferrite was built without MPI \
             (build it with `cargo build --release --features mpi`); each would train alone"
        ),
        _ => Ok(Box::new(Single)),
    }
}

#[cfg(feature = "mpi")]
pub mod mpi {
    //! [`Comm`] over MPI (Open MPI or MPICH, through the `mpi` crate).

    use super::Comm;
    use anyhow::{anyhow, Result};
    use mpi::collective::SystemOperation;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;
    use mpi::Threading;
    use std::cell::Cell;
    use std::mem::ManuallyDrop;

    pub struct Mpi {
        universe: ManuallyDrop<mpi::environment::Universe>,
        world: SimpleCommunicator,
        /// `finish` was called: dropping finalizes MPI; otherwise (an error
        /// unwinding) it aborts the run, since finalizing would wait for
        /// ranks that wait for this one.
        finished: Cell<bool>,
    }

    impl Mpi {
        /// MPI_Init. Serialized threading: ferrite calls MPI from one
        /// thread at a time, but not from the process's first thread (the
        /// work runs on a rayon worker).
        pub fn init() -> Result<Mpi> {
            let (universe, level) = mpi::initialize_with_threading(Threading::Serialized)
                .ok_or_else(|| anyhow!("MPI was already initialised"))?;
            if level < Threading::Serialized {
                return Err(anyhow!("this MPI library cannot be called from a second thread ({level:?})"));
            }
            let world = universe.world();
            Ok(Mpi { universe: ManuallyDrop::new(universe), world, finished: Cell::new(false) })
        }
    }

    impl Drop for Mpi {
        fn drop(&mut self) {
            if self.finished.get() {
                // SAFETY: dropped once, here; nothing uses it afterwards.
                unsafe { ManuallyDrop::drop(&mut self.universe) };
            } else {
                self.world.abort(1);
            }
        }
    }

    impl Comm for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum(&self, data: &mut [f32]) -> Result<()> {
            let send = data.to_vec();
            self.world.all_reduce_into(&send[..], data, SystemOperation::sum());
            Ok(())
        }
        fn all_reduce_sum_f64(&self, data: &mut [f64]) -> Result<()> {
            let send = data.to_vec();
            self.world.all_reduce_into(&send[..], data, SystemOperation::sum());
            Ok(())
        }
        fn broadcast(&self, data: &mut [f32], root: usize) -> Result<()> {
            self.world.process_at_rank(root as i32).broadcast_into(data);
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            self.world.barrier();
            Ok(())
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
        fn finish(&self) {
            self.finished.set(true);
        }
        fn describe(&self) -> String {
            let version = mpi::environment::library_version().unwrap_or_default();
            // "Open MPI v4.1.4, package: ..." or "MPICH Version: 4.0 ...": its name and version.
            let first = version.lines().next().unwrap_or("").split(',').next().unwrap_or("").trim().to_string();
            format!("MPI ({first}), {} processes", self.size())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_process_run_is_rank_0_of_1_and_changes_nothing() {
        let c = Single;
        let mut x = [1.0f32, 2.0];
        c.all_reduce_sum(&mut x).unwrap();
        c.broadcast(&mut x, 0).unwrap();
        c.barrier().unwrap();
        assert_eq!((c.rank(), c.size(), x), (0, 1, [1.0, 2.0]));
    }
}
