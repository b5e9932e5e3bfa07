//! The worked examples of `docs/`, computed by ferrite's own functions:
//! each key is one value of a page's `check` block (see `tests/docs.rs`).

use ferrite::engine::cpu::Cpu;
use ferrite::engine::{Activation, AdamWStep, AttnShape, Backend, CacheRow, DType, Dropout};
use ferrite::generate::sampler::pick;
use ferrite::generate::speculative::Speculative;
use ferrite::generate::{Sampler, SamplerConfig};
use ferrite::model::config::{pad_vocab, MlpKind};
use ferrite::model::{Gpt, ModelConfig, Recompute};
use ferrite::train::config::{preset, Schedule, TrainConfig};
use ferrite::train::schedule::learning_rate;
use std::collections::BTreeMap;

type Values = BTreeMap<&'static str, f64>;

fn host(b: &<Cpu as Backend>::Buf) -> Vec<f64> {
    Cpu.to_host(b).unwrap().into_iter().map(f64::from).collect()
}

fn up(v: &[f32]) -> <Cpu as Backend>::Buf {
    Cpu.upload(v).unwrap()
}

fn gpt2_small() -> ModelConfig {
    preset("gpt2-small").unwrap().model_for_vocab(50257)
}

/// Every value of every page.
pub fn computed() -> Values {
    let mut v = Values::new();
    adamw(&mut v);
    schedules(&mut v);
    accumulation_and_clipping(&mut v);
    training_step(&mut v);
    mlp(&mut v);
    head_and_loss(&mut v);
    bits_per_byte(&mut v);
    dropout(&mut v);
    recompute(&mut v);
    embeddings(&mut v);
    normalization(&mut v);
    attention(&mut v);
    residual(&mut v);
    sampling(&mut v);
    speculative(&mut v);
    bpe(&mut v);
    v
}

fn adamw(v: &mut Values) {
    let be = Cpu;
    let (mut p, mut m, mut s) = (up(&[1.0, -0.5]), be.zeros(2).unwrap(), be.zeros(2).unwrap());
    let step = |t| AdamWStep { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, t, grad_scale: 1.0 };
    be.adamw(&mut p, &up(&[0.5, -2.0]), &mut m, &mut s, step(1));
    let after1 = host(&p);
    be.adamw(&mut p, &up(&[0.25, 1.0]), &mut m, &mut s, step(2));
    let after2 = host(&p);
    v.insert("adamw_p0_after_step1", after1[0]);
    v.insert("adamw_p1_after_step1", after1[1]);
    v.insert("adamw_p0_after_step2", after2[0]);
    v.insert("adamw_p1_after_step2", after2[1]);
    v.insert("adamw_m0_after_step2", host(&m)[0]);
    v.insert("adamw_v1_after_step2", host(&s)[1]);
    let cfg = gpt2_small();
    let specs = ferrite::model::params::param_specs(&cfg);
    v.insert(
        "adamw_decayed_params_gpt2_small",
        specs.iter().filter(|s| s.decays()).map(|s| s.numel()).sum::<usize>() as f64,
    );
    let memory = ferrite::model::info::TrainMemory::new(&cfg, (8, 1024, Recompute::None, DType::F32), None);
    v.insert("adamw_optimizer_bytes_gpt2_small", memory.optimizer as f64);
}

fn schedules(v: &mut Values) {
    let c = preset("shakespeare-char-cpu").unwrap();
    let floorless = TrainConfig { min_lr: Some(0.0), ..c.clone() };
    let wsd = TrainConfig { schedule: Schedule::Wsd, ..c.clone() };
    let sum = |cfg: &TrainConfig| (1800..2000).map(|it| learning_rate(cfg, it)).sum::<f64>();
    v.insert("schedules_cpu_lr_it0", learning_rate(&c, 0));
    v.insert("schedules_cpu_lr_it50", learning_rate(&c, 50));
    v.insert("schedules_cpu_lr_it1050", learning_rate(&c, 1050));
    v.insert("schedules_cpu_lr_it1999", learning_rate(&c, 1999));
    v.insert("schedules_cpu_nofloor_lr_it1999", learning_rate(&floorless, 1999));
    v.insert("schedules_cpu_lr_sum_last200", sum(&c));
    v.insert("schedules_cpu_nofloor_lr_sum_last200", sum(&floorless));
    v.insert("schedules_cpu_wsd_lr_it1800", learning_rate(&wsd, 1800));
    v.insert("schedules_cpu_wsd_lr_it1999", learning_rate(&wsd, 1999));
    v.insert("schedules_gpt2_small_lr_it5000", learning_rate(&preset("gpt2-small").unwrap(), 5000));
}

fn accumulation_and_clipping(v: &mut Values) {
    let dolly = preset("dolly").unwrap();
    v.insert("accumulation_and_clipping_dolly_tokens_per_step", dolly.tokens_per_step() as f64);
    // The trainer's scale: 1 / (targets counted in the micro-batch x micro-batches).
    let (counted, accum) = (dolly.tokens_per_step() / dolly.grad_accum, dolly.grad_accum);
    v.insert("accumulation_and_clipping_dolly_grad_scale", f64::from(1.0 / (counted * accum) as f32));

    let be = Cpu;
    let (mut losses, mut logits) = (be.zeros(2).unwrap(), up(&[1., 2., 3., 0., 0., 0.]));
    be.cross_entropy(&mut losses, &mut logits, &[2, 0], 2, 3, 3, None, Some(0.25));
    let (g, l) = (host(&logits), host(&losses));
    v.insert("accumulation_and_clipping_ce_dlogit_r0_c0", g[0]);
    v.insert("accumulation_and_clipping_ce_dlogit_r0_c2", g[2]);
    v.insert("accumulation_and_clipping_ce_dlogit_r1_c0", g[3]);
    v.insert("accumulation_and_clipping_ce_loss_mean", (l[0] + l[1]) / 2.0);

    // Clipping: one gradient [3, 4, 12, 0, ...], the rest zero; with beta1 = 0
    // the first moment after the step is the clipped gradient itself.
    use ferrite::train::optimizer::{AdamW, Hyper};
    let mut model = Gpt::new(Cpu, ModelConfig::gpt2(11, 8, 1, 1, 8), 0).unwrap();
    let mut opt = AdamW::new(&model).unwrap();
    let mut g0 = vec![0.0; model.layout.specs[0].numel()];
    g0[..3].copy_from_slice(&[3.0, 4.0, 12.0]);
    Cpu.write(&mut opt.grads[0], &g0).unwrap();
    let h = Hyper { lr: 0.0, beta1: 0.0, beta2: 0.0, eps: 1e-8, weight_decay: 0.0, grad_clip: 1.0 };
    let norm = opt.step(&mut model, &h).unwrap();
    v.insert("accumulation_and_clipping_clip_grad_norm", norm);
    v.insert("accumulation_and_clipping_clip_factor", host(&opt.m[0])[0] / 3.0);
}

fn training_step(v: &mut Values) {
    let c = preset("shakespeare-char-cpu").unwrap();
    let m = c.model_for_vocab(65);
    v.insert("training_step_cpu_tokens_per_step", c.tokens_per_step() as f64);
    v.insert("training_step_cpu_matmul_params", m.matmul_params() as f64);
    v.insert("training_step_cpu_flops_per_token", m.train_flops_per_token(64));
    v.insert("training_step_cpu_flops_per_step", m.train_flops_per_token(64) * c.tokens_per_step() as f64);
    let c = preset("gpt2-small").unwrap();
    let m = gpt2_small();
    v.insert("training_step_gpt2_small_tokens_per_step", c.tokens_per_step() as f64);
    v.insert("training_step_gpt2_small_matmul_params", m.matmul_params() as f64);
    v.insert("training_step_gpt2_small_flops_per_token", m.train_flops_per_token(1024));
    v.insert("training_step_gpt2_small_flops_per_step", m.train_flops_per_token(1024) * c.tokens_per_step() as f64);
}

fn mlp(v: &mut Values) {
    let be = Cpu;
    let act = |x: f32, a: Activation| {
        let mut out = be.zeros(1).unwrap();
        be.activation_fwd(&mut out, &up(&[x]), 1, a);
        host(&out)[0]
    };
    let grad = |x: f32, a: Activation| {
        let mut d = be.zeros(1).unwrap();
        be.activation_bwd(&mut d, &up(&[x]), &up(&[1.0]), 1, a);
        host(&d)[0]
    };
    v.insert("mlp_gelu_tanh_at_1", act(1.0, Activation::GeluTanh));
    v.insert("mlp_gelu_tanh_grad_at_1", grad(1.0, Activation::GeluTanh));
    v.insert("mlp_gelu_at_1", act(1.0, Activation::Gelu));
    v.insert("mlp_gelu_grad_at_1", grad(1.0, Activation::Gelu));
    v.insert("mlp_gelu_tanh_at_minus_1", act(-1.0, Activation::GeluTanh));
    v.insert("mlp_gelu_at_minus_1", act(-1.0, Activation::Gelu));
    v.insert("mlp_relu2_at_1_5", act(1.5, Activation::Relu2));
    v.insert("mlp_relu2_grad_at_1_5", grad(1.5, Activation::Relu2));
    let (gate_up, mut out, mut d) = (up(&[1.0, 2.0]), be.zeros(1).unwrap(), be.zeros(2).unwrap());
    be.swiglu_fwd(&mut out, &gate_up, 1, 1);
    be.swiglu_bwd(&mut d, &gate_up, &up(&[1.0]), 1, 1);
    v.insert("mlp_swiglu_out", host(&out)[0]);
    v.insert("mlp_swiglu_dgate", host(&d)[0]);
    v.insert("mlp_swiglu_dup", host(&d)[1]);
    let swiglu = |c| ModelConfig { mlp: MlpKind::Swiglu, ..ModelConfig::gpt2(65, 64, 4, 4, c) }.hidden();
    v.insert("mlp_swiglu_hidden_128", swiglu(128) as f64);
    v.insert("mlp_swiglu_hidden_768", swiglu(768) as f64);
    let g = gpt2_small();
    let flops = 6 * g.n_layer * (g.n_embd * g.fc_width() + g.hidden() * g.n_embd);
    v.insert("mlp_train_flops_per_token_gpt2_small", flops as f64);
    let by = ferrite::model::info::params_by_component(&g);
    v.insert("mlp_params_gpt2_small", by.iter().find(|c| c.0 == "mlp").unwrap().1 as f64);
}

/// `cross_entropy` of one row: the loss and the row's gradient.
fn cross_entropy(logits: &[f32], target: u32, vocab: usize, cap: Option<f32>, scale: Option<f32>) -> (f64, Vec<f64>) {
    let (mut losses, mut l) = (Cpu.zeros(1).unwrap(), up(logits));
    Cpu.cross_entropy(&mut losses, &mut l, &[target], 1, vocab, logits.len(), cap, scale);
    (host(&losses)[0], host(&l))
}

fn head_and_loss(v: &mut Values) {
    v.insert("head_padded_vocab_50257", pad_vocab(50257) as f64);
    v.insert("head_padded_vocab_65", pad_vocab(65) as f64);
    let logits = [1.0, 2.0, 0.5, -1.0, 9.0, 9.0, 9.0, 9.0];
    let (loss, g) = cross_entropy(&logits, 0, 4, None, Some(1.0));
    v.insert("head_ce_loss", loss);
    for (key, i) in [("head_ce_grad_0", 0), ("head_ce_grad_1", 1), ("head_ce_grad_2", 2), ("head_ce_grad_3", 3)] {
        v.insert(key, g[i]);
    }
    v.insert("head_ce_grad_padding", g[4..].iter().map(|x| x.abs()).sum());
    let (loss, g) = cross_entropy(&logits, 0, 4, Some(2.0), Some(1.0));
    v.insert("head_ce_softcap_loss", loss);
    v.insert("head_ce_softcap_grad_1", g[1]);
    v.insert("head_uniform_loss_65", cross_entropy(&[0.0; 128], 3, 65, None, None).0);
    v.insert("head_uniform_loss_50257", cross_entropy(&vec![0.0; 50304], 3, 50257, None, None).0);
    let g = gpt2_small();
    v.insert("head_train_flops_per_token_gpt2_small", (6 * g.vocab_size * g.n_embd) as f64);
    v.insert("head_logits_bytes_gpt2_small", (8 * 1024 * g.padded_vocab * 4) as f64);
}

fn bits_per_byte(v: &mut Values) {
    // A model of zeros predicts the uniform distribution: every loss is ln V.
    let uniform = |vocab: usize, bytes: usize| {
        let cfg = ModelConfig::gpt2(vocab, 8, 1, 1, 8);
        let zeros: Vec<Vec<f32>> =
            ferrite::model::params::param_specs(&cfg).iter().map(|s| vec![0.0; s.numel()]).collect();
        let m = Gpt::from_host(Cpu, cfg, &zeros).unwrap();
        ferrite::eval::evaluate(&m, &(0..9u32).collect::<Vec<_>>(), &vec![bytes; vocab], 1, None).unwrap()
    };
    let r = uniform(256, 1);
    v.insert("bpb_uniform_byte_loss", r.loss);
    v.insert("bpb_uniform_byte_bits_per_token", r.bits_per_token);
    v.insert("bpb_uniform_byte_bits_per_byte", r.bits_per_byte);
    v.insert("bpb_uniform_byte_perplexity", r.perplexity);
    v.insert("bpb_uniform_char_bits_per_byte", uniform(65, 1).bits_per_byte);
    let r = uniform(50257, 4);
    v.insert("bpb_uniform_gpt2_bits_per_token", r.bits_per_token);
    v.insert("bpb_uniform_gpt2_bits_per_byte", r.bits_per_byte);
}

fn dropout(v: &mut Values) {
    let drop = Dropout { p: 0.25, seed: 7 };
    let mut buf = up(&[1., 2., 3., 4., 5., 6., 7., 8.]);
    Cpu.dropout(&mut buf, drop);
    let out = host(&buf);
    v.insert("dropout_out_0", out[0]);
    v.insert("dropout_out_1", out[1]);
    v.insert("dropout_out_3", out[3]);
    v.insert("dropout_out_sum", out.iter().sum());
    v.insert("dropout_kept_of_8", out.iter().filter(|&&x| x != 0.0).count() as f64);
    let mut ones = up(&[1.0; 8]);
    Cpu.dropout(&mut ones, drop);
    let grad = host(&ones);
    v.insert("dropout_grad_0", grad[0]);
    v.insert("dropout_grad_4", grad[4]);
    let kept = (0..100_000).filter(|&i| ferrite::engine::fastmath::keep(42, i, 0.2)).count();
    v.insert("dropout_keep_rate_p02_seed42", kept as f64 / 1e5);
}

fn recompute(v: &mut Values) {
    use ferrite::model::activations::activation_bytes;
    use ferrite::model::info::TrainMemory;
    let small = preset("shakespeare-char-cpu").unwrap().model_for_vocab(65);
    let bytes = |cfg: &ModelConfig, (b, t), r, dt| activation_bytes(cfg, b, t, r, dt) as f64;
    let total = |cfg: &ModelConfig, (b, t), r| TrainMemory::new(cfg, (b, t, r, DType::F32), None).total() as f64;
    let (s, g) = ((12, 64), (8, 1024));
    v.insert("recompute_act_bytes_none_char_cpu", bytes(&small, s, Recompute::None, DType::F32));
    v.insert("recompute_act_bytes_mlp_char_cpu", bytes(&small, s, Recompute::Mlp, DType::F32));
    v.insert("recompute_act_bytes_block_char_cpu", bytes(&small, s, Recompute::Block, DType::F32));
    v.insert("recompute_act_bytes_none_char_cpu_bf16", bytes(&small, s, Recompute::None, DType::BF16));
    v.insert("recompute_train_memory_none_char_cpu", total(&small, s, Recompute::None));
    let big = gpt2_small();
    v.insert("recompute_act_bytes_none_gpt2_small", bytes(&big, g, Recompute::None, DType::F32));
    v.insert("recompute_act_bytes_mlp_gpt2_small", bytes(&big, g, Recompute::Mlp, DType::F32));
    v.insert("recompute_act_bytes_block_gpt2_small", bytes(&big, g, Recompute::Block, DType::F32));
    v.insert("recompute_train_memory_block_gpt2_small", total(&big, g, Recompute::Block));
    v.insert("recompute_train_flops_per_token_gpt2_small", big.train_flops_per_token(1024));
    v.insert("recompute_extra_flops_mlp_gpt2_small", (2 * big.n_layer * big.n_embd * big.fc_width()) as f64);
    let block = 2 * (big.matmul_params() - big.vocab_size * big.n_embd);
    v.insert("recompute_extra_flops_block_gpt2_small", block as f64 + big.attn_flops_per_token(1024));
}

fn component(cfg: &ModelConfig, name: &str) -> f64 {
    let by = ferrite::model::info::params_by_component(cfg);
    by.iter().find(|c| c.0 == name).unwrap_or_else(|| panic!("no {name}")).1 as f64
}

fn embeddings(v: &mut Values) {
    use ferrite::model::positions::{rope_tables, sinusoidal};
    let be = Cpu;
    let (mut dwte, mut dwpe) = (be.zeros(8).unwrap(), be.zeros(6).unwrap());
    be.embedding_bwd(&mut dwte, Some(&mut dwpe), &up(&[1., 2., 3., 4., 5., 6.]), &[1, 3, 1], &[0, 1, 2], 2);
    let (dwte, dwpe) = (host(&dwte), host(&dwpe));
    v.insert("embeddings_dwte_row1_col0", dwte[2]);
    v.insert("embeddings_dwte_row1_col1", dwte[3]);
    v.insert("embeddings_dwpe_row2_col1", dwpe[5]);
    let table = sinusoidal(4, 8);
    v.insert("embeddings_sinusoidal_p3_c0", table[24] as f64);
    v.insert("embeddings_sinusoidal_p3_c2", table[26] as f64);
    let rotate = |positions: usize, qkv: &[f32], at: &[u32]| {
        let (cos, sin) = rope_tables(positions, 4, 10000.0);
        let shape = AttnShape { batch: 1, seq: at.len(), heads: 1, kv_heads: 1, head_dim: 4 };
        let mut buf = up(qkv);
        be.rope(&mut buf, &up(&cos), &up(&sin), shape, at, false);
        host(&buf)
    };
    let r = rotate(3, &[1., 2., 3., 4., 0.5, -1., 2., 1., 9., 9., 9., 9.], &[2]);
    v.insert("embeddings_rope_q0", r[0]);
    v.insert("embeddings_rope_q3", r[3]);
    v.insert("embeddings_rope_k0", r[4]);
    v.insert("embeddings_rope_v0", r[8]);
    let mut two = vec![0.0; 24];
    two[..4].copy_from_slice(&[1., 2., 3., 4.]);
    two[16..20].copy_from_slice(&[0.5, -1., 2., 1.]);
    let r = rotate(6, &two, &[5, 3]);
    v.insert("embeddings_rope_rel_dot", (0..4).map(|i| r[i] * r[16 + i]).sum());
    let g = gpt2_small();
    v.insert("embeddings_wte_params_gpt2_small", component(&g, "token embedding"));
    v.insert("embeddings_wpe_params_gpt2_small", component(&g, "position embedding"));
}

fn normalization(v: &mut Values) {
    let be = Cpu;
    let z = |n| be.zeros(n).unwrap();
    let (x, w, dout) = (up(&[1., 2., 3., 4.]), up(&[0.5, 1., 1.5, 2.]), up(&[1., -1., 0.5, 0.]));
    let (mut out, mut mean, mut rstd) = (z(4), z(1), z(1));
    be.layernorm_fwd(&mut out, &mut mean, &mut rstd, &x, &w, Some(&up(&[0.1, 0.1, -0.1, 0.])), 1, 4, 1e-5);
    let (mut dx, mut dw, mut db) = (z(4), z(4), z(4));
    be.layernorm_bwd(&mut dx, &mut dw, Some(&mut db), &dout, &x, &w, &mean, &rstd, 1, 4);
    let (o, dx, dw, db) = (host(&out), host(&dx), host(&dw), host(&db));
    v.insert("normalization_layernorm_mean", host(&mean)[0]);
    v.insert("normalization_layernorm_rstd", host(&rstd)[0]);
    v.insert("normalization_layernorm_out_0", o[0]);
    v.insert("normalization_layernorm_out_3", o[3]);
    v.insert("normalization_layernorm_dx_0", dx[0]);
    v.insert("normalization_layernorm_dx_1", dx[1]);
    v.insert("normalization_layernorm_dw_0", dw[0]);
    v.insert("normalization_layernorm_db_2", db[2]);

    let (mut out, mut rstd) = (z(4), z(1));
    be.rmsnorm_fwd(&mut out, &mut rstd, &x, &w, 1, 4, 1e-6);
    let (mut dx, mut dw) = (z(4), z(4));
    be.rmsnorm_bwd(&mut dx, &mut dw, &dout, &x, &w, &rstd, 1, 4);
    let (dx, dw) = (host(&dx), host(&dw));
    v.insert("normalization_rmsnorm_rstd", host(&rstd)[0]);
    v.insert("normalization_rmsnorm_out_3", host(&out)[3]);
    v.insert("normalization_rmsnorm_dx_1", dx[1]);
    v.insert("normalization_rmsnorm_dx_2", dx[2]);
    v.insert("normalization_rmsnorm_dw_1", dw[1]);

    let shape = AttnShape { batch: 1, seq: 1, heads: 1, kv_heads: 1, head_dim: 2 };
    let qkv = up(&[3., 4., 1., -1., 5., 6.]);
    let (mut out, mut rstd, mut dqkv) = (z(6), z(2), z(6));
    be.qk_norm_fwd(&mut out, &mut rstd, &qkv, shape, 1);
    be.qk_norm_bwd(&mut dqkv, &up(&[1., 0., 0., 0., 7., 8.]), &qkv, &rstd, shape, 1);
    let dq = host(&dqkv);
    v.insert("normalization_qknorm_q0", host(&out)[0]);
    v.insert("normalization_qknorm_dq0", dq[0]);
    v.insert("normalization_qknorm_dq1", dq[1]);
    v.insert("normalization_qknorm_dv0", dq[4]);
    v.insert("normalization_params_gpt2_small", component(&gpt2_small(), "norms"));
}

/// Attention forward and backward of `qkv`: (out, stats, dqkv).
fn attend(shape: AttnShape, qkv: &[f32], dout: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let be = Cpu;
    let rows = shape.batch * shape.seq;
    let (qkv, mut out) = (up(qkv), be.zeros(rows * shape.q_width()).unwrap());
    let mut stats = be.zeros(2 * rows * shape.heads).unwrap();
    be.attention_fwd(&mut out, &mut stats, &qkv, shape, Dropout::OFF);
    let mut dqkv = be.zeros(rows * shape.qkv_width()).unwrap();
    be.attention_bwd(&mut dqkv, &up(dout), &qkv, &stats, shape, Dropout::OFF);
    (host(&out), host(&stats), host(&dqkv))
}

fn attention(v: &mut Values) {
    let mha = AttnShape { batch: 1, seq: 2, heads: 1, kv_heads: 1, head_dim: 2 };
    let qkv = [1., 0., 1., 0., 1., 2., 1., 1., 0., 2., 3., -1.];
    let (out, stats, d) = attend(mha, &qkv, &[0., 0., 1., 0.]);
    v.insert("attention_out_1_0", out[2]);
    v.insert("attention_stats_max_1", stats[2]);
    v.insert("attention_stats_inv_1", stats[3]);
    v.insert("attention_dq_1_1", d[7]);
    v.insert("attention_dk_0_0", d[2]);
    v.insert("attention_dv_0_0", d[4]);
    let be = Cpu;
    let (mut out, mut kc, mut vc) = (be.zeros(4).unwrap(), be.zeros(4).unwrap(), be.zeros(4).unwrap());
    let rows = [CacheRow { slot: 0, pos: 0 }, CacheRow { slot: 0, pos: 1 }];
    be.attention_cached(&mut out, &up(&qkv), &mut kc, &mut vc, &rows, 2, mha);
    v.insert("attention_cached_out_1_0", host(&out)[2]);

    let gqa = AttnShape { batch: 1, seq: 2, heads: 2, kv_heads: 1, head_dim: 2 };
    let qkv = [1., 0., 0., 1., 1., 0., 1., 2., 1., 1., 2., 0., 0., 2., 3., -1.];
    let (out, _, d) = attend(gqa, &qkv, &[0., 0., 0., 0., 1., 0., 0., 1.]);
    v.insert("attention_gqa_out_1_2", out[6]);
    v.insert("attention_gqa_dk_0_0", d[4]);
    v.insert("attention_gqa_dv_0_1", d[7]);

    let g = gpt2_small();
    v.insert("attention_flops_per_token_gpt2_small", g.attn_flops_per_token(1024));
    v.insert("attention_params_gpt2_small", component(&g, "attention"));
    let kv = ferrite::model::info::kv_cache_bytes_per_token;
    v.insert("attention_kv_bytes_per_token_gpt2_small_bf16", kv(&g, DType::BF16) as f64);
    let gqa4 = ModelConfig { n_kv_head: Some(4), ..g };
    v.insert("attention_kv_bytes_per_token_gpt2_small_gqa4_bf16", kv(&gqa4, DType::BF16) as f64);
}

fn residual(v: &mut Values) {
    use ferrite::model::params::{Init, Layout};
    let lay = Layout::new(&gpt2_small());
    let std = |i: usize| match lay.specs[i].init {
        Init::Normal(s) => s as f64,
        _ => panic!("not a normal init"),
    };
    assert_eq!(std(lay.blocks[0].proj.w), std(lay.blocks[0].fcproj.w));
    v.insert("residual_proj_std_gpt2_small", std(lay.blocks[0].proj.w));
    v.insert("residual_qkv_std_gpt2_small", std(lay.blocks[0].qkv.w));
    // The stream's gradient (1 everywhere) plus what flows back through a norm.
    let be = Cpu;
    let z = |n| be.zeros(n).unwrap();
    let (x, w) = (up(&[1., 2., 3., 4.]), up(&[1.; 4]));
    let (mut out, mut mean, mut rstd) = (z(4), z(1), z(1));
    be.layernorm_fwd(&mut out, &mut mean, &mut rstd, &x, &w, None, 1, 4, 1e-5);
    let (mut dinp, mut dw) = (up(&[1.; 4]), z(4));
    be.layernorm_bwd(&mut dinp, &mut dw, None, &up(&[1., 0., 0., 0.]), &x, &w, &mean, &rstd, 1, 4);
    let d = host(&dinp);
    v.insert("residual_dres_0", d[0]);
    v.insert("residual_dres_1", d[1]);
}

const LOGITS: [f32; 5] = [1.0, 3.0, 2.0, 0.5, 2.9];

/// The sampler's distribution as a probability per id.
fn distribution(cfg: SamplerConfig, logits: &[f32], history: &[u32]) -> Vec<f64> {
    let mut p = vec![0.0; logits.len()];
    for &(id, q) in Sampler::new(cfg, 0).distribution(logits, history) {
        p[id as usize] = q;
    }
    p
}

fn plain(temperature: f32) -> SamplerConfig {
    SamplerConfig { temperature, top_k: 0, ..SamplerConfig::default() }
}

fn sampling(v: &mut Values) {
    v.insert("sampling_softmax_t1_p1", distribution(plain(1.0), &LOGITS, &[])[1]);
    v.insert("sampling_softmax_t1_p4", distribution(plain(1.0), &LOGITS, &[])[4]);
    v.insert("sampling_softmax_t05_p1", distribution(plain(0.5), &LOGITS, &[])[1]);
    v.insert("sampling_softmax_t2_p1", distribution(plain(2.0), &LOGITS, &[])[1]);
    let penalised = |temperature| SamplerConfig {
        repetition_penalty: 1.5,
        frequency_penalty: 0.2,
        presence_penalty: 0.3,
        ..plain(temperature)
    };
    let p = distribution(penalised(1.0), &LOGITS, &[1, 1, 4]);
    v.insert("sampling_penalty_p2", p[2]);
    v.insert("sampling_penalty_p1", p[1]);
    v.insert("sampling_penalty_greedy_token", Sampler::new(penalised(0.0), 0).sample(&LOGITS, &[1, 1, 4]) as f64);
    v.insert("sampling_greedy_token", Sampler::new(SamplerConfig::greedy(), 0).sample(&LOGITS, &[]) as f64);
    let pipeline = SamplerConfig { temperature: 0.7, top_k: 4, top_p: 0.9, min_p: 0.4, ..SamplerConfig::default() };
    let mut sampler = Sampler::new(pipeline, 0);
    let kept = sampler.distribution(&LOGITS, &[]);
    v.insert("sampling_pipeline_kept", kept.len() as f64);
    v.insert("sampling_pipeline_p1", kept.iter().find(|d| d.0 == 1).unwrap().1);
    let mut sampler = Sampler::new(plain(1.0), 0);
    v.insert("sampling_pick_u05_token", pick(sampler.distribution(&LOGITS, &[]), 0.5) as f64);
}

fn speculative(v: &mut Values) {
    let p = distribution(plain(1.0), &LOGITS, &[]);
    let q = distribution(plain(1.0), &[1.0, 2.0, 3.0, 0.5, 2.0], &[]);
    let alpha: f64 = p.iter().zip(&q).map(|(a, b)| a.min(*b)).sum();
    let excess: Vec<f64> = p.iter().zip(&q).map(|(a, b)| (a - b).max(0.0)).collect();
    let residual: Vec<f64> = excess.iter().map(|e| e / excess.iter().sum::<f64>()).collect();
    let accept = |i: usize| (p[i] / q[i]).min(1.0);
    v.insert("speculative_alpha", alpha);
    v.insert("speculative_accept_token2", accept(2));
    v.insert("speculative_accept_token0", accept(0));
    v.insert("speculative_residual_token1", residual[1]);
    v.insert("speculative_residual_token4", residual[4]);
    v.insert("speculative_output_token1", q[1] * accept(1) + (1.0 - alpha) * residual[1]);
    let tokens = (1.0 - alpha.powi(5)) / (1.0 - alpha);
    v.insert("speculative_expected_tokens_k4", tokens);
    v.insert("speculative_expected_accepted_k4", tokens - 1.0);
    v.insert("speculative_acceptance_stat_k4", (tokens - 1.0) / 4.0);
    let greedy_p = distribution(SamplerConfig::greedy(), &LOGITS, &[]);
    let greedy_q = distribution(SamplerConfig::greedy(), &[1.0, 2.0, 3.0, 0.5, 2.0], &[]);
    v.insert("speculative_greedy_accept_token2", (greedy_p[2] / greedy_q[2]).min(1.0));
    // A model drafting for itself: every proposal is accepted.
    let m = std::sync::Arc::new(Gpt::new(Cpu, ModelConfig::gpt2(11, 32, 2, 2, 16), 1).unwrap());
    let mut s = Speculative::new(m.clone(), m, Sampler::new(SamplerConfig::greedy(), 0), 4).unwrap();
    s.prefill(&[1, 2, 3]).unwrap();
    v.insert("speculative_self_draft_tokens_per_pass", s.next_tokens().unwrap().len() as f64);
    v.insert("speculative_self_draft_acceptance", s.stats.acceptance());
}

fn bpe(v: &mut Values) {
    use ferrite::data::{HfTokenizer, OpenAiVocab, Tokenizer};
    let trained = Tokenizer::Hf { tokenizer: HfTokenizer::train_bpe(300, ["aaabdaaabac"].into_iter()).unwrap() };
    let vocab = trained.bpe_vocab().unwrap();
    let id = |t: &str| vocab.tokens.iter().position(|x| x == t).unwrap() as f64;
    v.insert("bpe_train_vocab_size", trained.vocab_size() as f64);
    v.insert("bpe_train_merges", vocab.merges.len() as f64);
    v.insert("bpe_train_id_a", id("a"));
    v.insert("bpe_train_id_aa", id("aa"));
    v.insert("bpe_train_id_ab", id("ab"));
    v.insert("bpe_train_id_aaab", id("aaab"));
    let ids = trained.encode("aaabdaaabac").unwrap();
    v.insert("bpe_train_encoded_len", ids.len() as f64);
    v.insert("bpe_train_encoded_first", ids[0] as f64);
    v.insert("bpe_train_encoded_second", ids[1] as f64);
    let bytes = Tokenizer::Byte.bpe_vocab().unwrap();
    v.insert("bpe_byte_char_space", bytes.tokens[32].chars().next().unwrap() as u32 as f64);
    v.insert("bpe_byte_char_newline", bytes.tokens[10].chars().next().unwrap() as u32 as f64);
    let gpt2 = Tokenizer::Tiktoken { name: OpenAiVocab::Gpt2 };
    let ids = gpt2.encode("Hello tokenization!").unwrap();
    v.insert("bpe_gpt2_hello", ids[0] as f64);
    v.insert("bpe_gpt2_token", ids[1] as f64);
    v.insert("bpe_gpt2_ization", ids[2] as f64);
    v.insert("bpe_gpt2_n_tokens", ids.len() as f64);
    v.insert("bpe_gpt2_merges", gpt2.bpe_vocab().unwrap().merges.len() as f64);
    let cl100k = Tokenizer::Tiktoken { name: OpenAiVocab::Cl100kBase };
    v.insert("bpe_cl100k_hello", cl100k.encode("Hello tokenization!").unwrap()[0] as f64);
}
