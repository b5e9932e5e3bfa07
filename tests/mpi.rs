//! Data-parallel training over MPI: `mpirun -np N ferrite train` gives the
//! run a single process gives (to float rounding), resumes with any N, and
//! a rank that dies ends the others. Needs the `mpi` feature and Open MPI
//! (`cargo test --features mpi --test mpi`; CI installs openmpi-bin and
//! libopenmpi-dev). Without the feature only the first test runs.

mod common;

/// A build without MPI refuses to be one of several processes (each would
/// train alone and overwrite the others' checkpoints).
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_be_one_of_several_processes() {
    use common::*;
    let dir = scratch("mpi-refuse");
    let out = ferrite_env(
        &["train", "--max-iters", "1", "--out", &p(&dir.join("run"))],
        &[("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_RANK", "1")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("built without MPI"), "{stderr}");
}

#[cfg(feature = "mpi")]
mod with_mpi {
    use super::common::*;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};
    use std::time::{Duration, Instant};

    /// `mpirun -np n ferrite ARGS`, one thread per rank, shared memory only.
    fn mpirun(n: usize, args: &[&str]) -> Command {
        let mut c = Command::new("mpirun");
        c.args(["--allow-run-as-root", "--oversubscribe", "--mca", "btl", "self,vader"])
            .args(["--mca", "btl_vader_single_copy_mechanism", "none", "-x", "RAYON_NUM_THREADS=1"])
            .args(["-x", "XDG_CACHE_HOME", "-np", &n.to_string(), env!("CARGO_BIN_EXE_ferrite")])
            .args(args)
            .env("XDG_CACHE_HOME", scratch("mpi-cache"));
        c
    }

    fn run(n: usize, args: &[&str]) -> Output {
        let out = if n == 1 {
            Command::new(env!("CARGO_BIN_EXE_ferrite")).args(args).env("RAYON_NUM_THREADS", "1").output().unwrap()
        } else {
            mpirun(n, args).output().unwrap()
        };
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{n} processes: {args:?}:\n{log}");
        out
    }

    /// A small run of the default model: the global batch is 4 micro-batches of 4.
    fn train_args(out: &Path, iters: usize) -> Vec<String> {
        let mut a: Vec<String> = ["train", "--max-iters", &iters.to_string(), "--batch-size", "4", "--grad-accum", "4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(
            ["--eval-interval", "25", "--eval-iters", "4", "--log-interval", "1", "--sample-tokens", "0"]
                .map(String::from),
        );
        // The schedule must not depend on where a run stops (resumed runs).
        a.extend(["--lr-decay-iters", "50"].map(String::from));
        a.extend(["--out".to_string(), p(out)]);
        a
    }

    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(|s| s.as_str()).collect()
    }

    /// The training losses of a run, by step.
    fn losses(run: &Path) -> Vec<f64> {
        let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        text.lines().map(json).filter(|v| v["kind"] == "train").map(|v| v["loss"].as_f64().unwrap()).collect()
    }

    fn weights(run: &Path) -> Vec<f32> {
        let ck = ferrite::checkpoint::load(&run.join("last"), false).unwrap();
        ck.params.into_iter().flatten().collect()
    }

    /// Largest |a - b| relative to the largest |b|.
    fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max) / scale
    }

    /// 2 and 4 ranks train as 1 process does: the same micro-batches, summed
    /// in another order. Float addition is not associative, so the sums
    /// differ in the last bits (about 1e-7 relative) and the difference
    /// grows a little with each AdamW step; 50 steps stay within 1e-4.
    #[test]
    fn two_and_four_ranks_train_as_one_process_does_and_resume_with_any_number() {
        let dir = scratch("mpi-equal");
        let runs: Vec<PathBuf> = (0..4).map(|i| dir.join(format!("run{i}"))).collect();
        run(1, &strs(&train_args(&runs[0], 50)));
        let out = run(2, &strs(&train_args(&runs[1], 50)));
        assert!(String::from_utf8_lossy(&out.stdout).contains("data parallel: MPI"), "{out:?}");
        run(4, &strs(&train_args(&runs[2], 50)));
        let one = losses(&runs[0]);
        assert_eq!(one.len(), 50);
        for (n, run) in [(2, &runs[1]), (4, &runs[2])] {
            let got = losses(run);
            assert_eq!(got.len(), 50, "{n} ranks");
            for (step, (a, b)) in got.iter().zip(&one).enumerate() {
                assert!((a - b).abs() <= 1e-4 * b.abs(), "{n} ranks, step {}: {a} vs {b}", step + 1);
            }
            let d = rel_diff(&weights(run), &weights(&runs[0]));
            assert!(d < 1e-4, "{n} ranks: final weights differ by {d}");
        }
        // 25 steps on 2 ranks, then the rest on 4: the same run again.
        run(2, &strs(&train_args(&runs[3], 25)));
        let mut resume = train_args(&runs[3], 50);
        resume.retain(|a| a != "--out" && *a != p(&runs[3]));
        resume.splice(1..1, ["--resume".to_string(), p(&runs[3])]);
        run(4, &strs(&resume));
        let d = rel_diff(&weights(&runs[3]), &weights(&runs[0]));
        assert!(d < 1e-4, "resumed on 4 ranks: final weights differ by {d}");
    }

    /// A prepared (memory-mapped) dataset: each rank reads its micro-batches
    /// from the same shards, and 2 ranks train as 1 process does.
    #[test]
    fn ranks_share_a_prepared_dataset() {
        let dir = scratch("mpi-dataset");
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let docs: Vec<String> = text.split("\n\n").map(|d| serde_json::json!({ "text": d }).to_string()).collect();
        std::fs::write(dir.join("docs.jsonl"), docs.join("\n")).unwrap();
        let ds = dir.join("ds");
        ok(&["data", "prepare", "--input", &p(&dir.join("docs.jsonl")), "--out", &p(&ds), "-t", "byte"]);
        let args = |out: &Path| {
            let mut a = train_args(out, 10);
            a.extend(["--dataset".to_string(), p(&ds)]);
            a
        };
        let (one, two) = (dir.join("one"), dir.join("two"));
        run(1, &strs(&args(&one)));
        run(2, &strs(&args(&two)));
        for (a, b) in losses(&two).iter().zip(&losses(&one)) {
            assert!((a - b).abs() <= 1e-4 * b.abs(), "{a} vs {b}");
        }
        assert!(rel_diff(&weights(&two), &weights(&one)) < 1e-4);
    }

    #[test]
    fn more_ranks_than_micro_batches_is_a_clear_error() {
        let dir = scratch("mpi-accum");
        let out = mpirun(2, &["train", "--max-iters", "1", "--out", &p(&dir.join("run"))]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("--grad-accum"), "{stderr}");
    }

    /// The process of rank `rank` of a run writing to `out`.
    fn rank_pid(out: &Path, rank: usize) -> Option<u32> {
        let want = format!("OMPI_COMM_WORLD_RANK={rank}");
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
            let (cmd, env) = (String::from_utf8_lossy(&cmd), String::from_utf8_lossy(&env));
            if cmd.contains(&p(out)) && !cmd.starts_with("mpirun") && env.split('\0').any(|v| v == want) {
                return Some(pid);
            }
        }
        None
    }

    /// Rank 1 killed mid-run: the run ends, non-zero, within 60 s, and it
    /// resumes from its last checkpoint.
    #[test]
    fn a_rank_that_dies_ends_the_run_and_the_last_checkpoint_resumes() {
        let dir = scratch("mpi-kill");
        let out = dir.join("run");
        let mut args = train_args(&out, 100_000);
        let at = args.iter().position(|a| a == "--eval-interval").unwrap();
        args[at + 1] = "10".into();
        let mut job = mpirun(2, &strs(&args)).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let start = Instant::now();
        while !out.join("last").join("config.json").exists() {
            assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        let pid = rank_pid(&out, 1).expect("rank 1's process");
        // SAFETY: sending a signal to a process this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let killed = Instant::now();
        let status = loop {
            if let Some(s) = job.try_wait().unwrap() {
                break s;
            }
            if killed.elapsed() > Duration::from_secs(60) {
                let _ = job.kill();
                panic!("the run did not end within 60 s of a rank's death");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(!status.success(), "the run ended with success after a rank died");
        let step = ferrite::checkpoint::load(&out.join("last"), true).unwrap().state.step;
        assert!(step >= 10 && step.is_multiple_of(10), "last checkpoint at step {step}");
        let stdout = ok(&["train", "--resume", &p(&out), "--max-iters", &(step + 2).to_string()]);
        assert!(stdout.contains(&format!("resuming at step {step}")), "{stdout}");
    }
}
