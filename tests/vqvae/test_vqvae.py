"""Tests for :mod:`diffusion.models.vqvae`: shapes, tokens, codebook learning (EMA, k-means, dead-code
restarts), training on Fashion-MNIST, save/load, metrics, bf16 autocast and input errors."""

from __future__ import annotations

import doctest
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import diffusion.models.vqvae as vqvae_module
from diffusion.models.vqvae import VQVAE, VQVAEOutput, codebook_usage, reconstruction_metrics

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SMALL = dict(channels=(16, 32), codebook_size=64, codebook_dim=16)  # ~75k parameters


def seeded(seed: int = 0, **config) -> VQVAE:
    """A VQVAE with weights from ``seed``; the caller's global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VQVAE(**config)


def images(n: int, seed: int = 0, size: int = 28, channels: int = 1) -> torch.Tensor:
    """Smooth random images in [-1, 1] (blurred noise, so neighbouring pixels correlate)."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.randn(n, channels, size + 4, size + 4, generator=g), 5, stride=1)
    return (x / x.abs().amax()).clamp(-1, 1)


def buffers(model: VQVAE) -> dict:
    return {k: v.clone() for k, v in model.named_buffers()}


def assert_same_buffers(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def trained_small():
    """SMALL model after 5 training-mode forwards on smooth random images (codebook initialised)."""
    model = seeded(0, **SMALL)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for i in range(5):
            model(images(16, seed=i))
    return model


# -- shapes and tokens ---------------------------------------------------------------------------
def test_default_shapes_28x28_to_7x7():
    model = seeded(0)
    assert model.token_grid == (7, 7) and model.num_tokens == 49
    assert 250_000 < sum(p.numel() for p in model.parameters()) < 1_000_000
    out = model(images(3))
    assert isinstance(out, VQVAEOutput)
    assert out.sample.shape == (3, 1, 28, 28) and out.sample.dtype == torch.float32
    assert out.indices.shape == (3, 7, 7) and out.indices.dtype == torch.int64
    assert out.commit_loss.shape == () and torch.isfinite(out.commit_loss)
    assert 0 <= int(out.indices.min()) and int(out.indices.max()) < 256
    out.sample.sum().add(out.commit_loss).backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0  # through the straight-through estimator


@pytest.mark.parametrize("config,grid", [
    (dict(image_size=32, channels=(8, 8, 8), in_channels=3), (4, 4)),
    (dict(image_size=16, channels=(8,), in_channels=2), (8, 8))])
def test_other_sizes_and_channels(config, grid):
    model = seeded(0, codebook_size=16, codebook_dim=4, **config)
    x = images(2, size=config["image_size"], channels=config["in_channels"])
    out = model(x)
    assert model.token_grid == grid and out.indices.shape == (2, *grid)
    assert out.sample.shape == x.shape
    assert model.tokenize(x).shape == (2, grid[0] * grid[1])


@pytest.mark.parametrize("train_mode", [True, False])
def test_tokenize_round_trip_and_leaves_state_alone(trained_small, train_mode):
    model = trained_small.train(train_mode)
    x = images(5, seed=10)
    before = buffers(model)
    tokens = model.tokenize(x)
    assert_same_buffers(before, buffers(model))  # codebook, EMA sums and counts untouched
    assert all(m.training == train_mode for m in model.modules())
    assert tokens.shape == (5, 49) and tokens.dtype == torch.int64

    model.eval()
    with torch.no_grad():
        z_q, indices, _ = model.quantize(model.encode(x))
        reference = model.decode(z_q)
    model.train(train_mode)
    # raster order: token r * w + c is grid cell (r, c)
    assert torch.equal(tokens.view(5, 7, 7), indices)
    assert tokens[2, 3 * 7 + 5] == indices[2, 3, 5]
    decoded = model.decode_tokens(tokens)
    assert torch.equal(decoded, reference.clamp(-1, 1))
    assert torch.equal(model.decode_tokens(tokens.view(5, 7, 7)), decoded)
    assert decoded.min() >= -1 and decoded.max() <= 1
    assert_same_buffers(before, buffers(model))


def test_eval_before_kmeans_init_raises():
    model = seeded(0, **SMALL)
    with pytest.raises(RuntimeError, match="not initialised"):
        model.tokenize(images(1))
    with pytest.raises(RuntimeError, match="not initialised"):
        model.eval()(images(1))
    assert not model.codebook_initialized


# -- the quantizer learns a codebook ------------------------------------------------------------
def distinct_cluster_fraction(kmeans_init: bool, threshold_ema_dead_code: float = 2):
    """Train the quantizer exactly as VQVAE builds it (EMA, dead-code restarts, k-means init or
    not) for 300 steps on K=16 well-separated Gaussian clusters in D=32 with a codebook of 32;
    return (fraction of clusters whose majority code no other cluster has, quantization MSE)."""
    K, D, grid = 16, 32, (7, 7)
    model = seeded(0, codebook_size=32, codebook_dim=D, kmeans_init=kmeans_init,
                   threshold_ema_dead_code=threshold_ema_dead_code)
    g = torch.Generator().manual_seed(0)
    centers = 3 * torch.randn(K, D, generator=g)  # pairwise distances ~ 3 * sqrt(2 D) = 24

    def draw(batch):
        labels = torch.randint(0, K, (batch, *grid), generator=g)
        z = centers[labels] + 0.3 * torch.randn(batch, *grid, D, generator=g)  # noise norm ~ 1.7
        return z.permute(0, 3, 1, 2), labels  # (B, D, h, w), (B, h, w)

    with torch.random.fork_rng(devices=[]):  # k-means seeding and restarts use the global RNG
        torch.manual_seed(0)
        for _ in range(300):
            model.quantize(draw(8)[0])  # 392 vectors per step
    model.eval()
    z, labels = draw(40)
    z_q, codes, _ = model.quantize(z)
    majority = torch.stack([codes[labels == k].mode().values for k in range(K)])
    distinct = [(majority[k] != torch.cat([majority[:k], majority[k + 1:]])).all()
                for k in range(K)]
    return sum(map(bool, distinct)) / K, float(F.mse_loss(z_q, z))


@pytest.mark.parametrize("kmeans_init", [True, False])
def test_quantizer_separates_well_separated_clusters(kmeans_init):
    """>= 90% of K clusters get distinct codes with a codebook of size >= K. With kmeans_init=False
    the codebook starts near 0 (Kaiming uniform, far from every cluster) and only dead-code
    restarts place codes on the clusters."""
    fraction, mse = distinct_cluster_fraction(kmeans_init)
    assert fraction >= 0.9
    assert mse < 0.2  # codes sit on the cluster means: error ~ the noise (0.09), not the spacing


def test_without_restarts_or_kmeans_clusters_collapse():
    """The control for the test above: no k-means init and no dead-code restarts -> the few codes
    nearest the origin capture several clusters each (so that test can fail)."""
    fraction, mse = distinct_cluster_fraction(kmeans_init=False, threshold_ema_dead_code=0)
    assert fraction < 0.9 and mse > 0.3


@pytest.mark.parametrize("batch", [1, 2])
def test_batches_smaller_than_the_codebook_and_identical_vectors(batch):
    model = seeded(0)  # 256 codes; one image gives 49 vectors
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        out = model(images(batch))  # k-means init on fewer vectors than codes
        assert model.codebook_initialized
        zeros = torch.zeros(batch, 1, 28, 28)
        outs = [out] + [model(zeros) for _ in range(3)] + [model(images(batch, seed=1))]
    for o in outs:
        assert torch.isfinite(o.sample).all() and torch.isfinite(o.commit_loss)
    for name, b in model.named_buffers():
        assert torch.isfinite(b.float()).all(), name
    assert torch.isfinite(model.eval().decode_tokens(model.tokenize(zeros))).all()


def test_identical_vectors_at_kmeans_init():
    model = seeded(0, **SMALL)
    z_e = torch.ones(2, 16, 7, 7)  # every vector of the first batch is the same
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        z_q, indices, commit_loss = model.quantize(z_e)  # k-means init, EMA step, restarts
        z_q2, indices2, _ = model.quantize(z_e)
    assert torch.isfinite(model.codebook).all() and torch.isfinite(commit_loss)
    assert len(indices.unique()) == 1 and len(indices2.unique()) == 1
    assert torch.allclose(z_q, z_e) and torch.allclose(z_q2, z_e)


def test_ema_updates_in_train_mode_only(trained_small):
    model = trained_small
    x = images(8, seed=20)
    model.eval()
    before = buffers(model)
    out = model(x)
    assert_same_buffers(before, buffers(model))
    assert out.commit_loss > 0  # reported in eval mode too

    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model(x)
    after = buffers(model)
    cb = "quantizer._codebook."
    for name in ("embed", "embed_avg", "cluster_size"):
        assert not torch.equal(before[cb + name], after[cb + name]), name
    # EMA of the usage counts: gamma * N_old + (1 - gamma) * n_batch (App. A.1), before restarts
    assert torch.allclose(after[cb + "cluster_size"].sum(),
                          0.99 * before[cb + "cluster_size"].sum() + 0.01 * 8 * 49, rtol=0.05)


# -- training on real data ----------------------------------------------------------------------
@pytest.mark.skipif(not FASHION_MNIST.exists(), reason="Fashion-MNIST not installed")
def test_short_training_reduces_reconstruction_error():
    from diffusion.data import load_dataset

    x = load_dataset("fashion-mnist", split="test").images[:256]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VQVAE(**SMALL)
        model(x[:64])  # k-means init from the untrained encoder
        before = reconstruction_metrics(model, x)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        g = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(60):
            batch = x[torch.randint(0, len(x), (32,), generator=g)]
            out = model(batch)
            loss = F.mse_loss(out.sample, batch) + out.commit_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = reconstruction_metrics(model, x, batch_size=100)
    assert model.training  # metrics leave the mode alone
    assert after["mse"] < 0.4 * before["mse"], (before, after)
    assert after["psnr"] > before["psnr"] + 4 and after["psnr"] > 13
    assert after["codebook_used"] >= 16
    # mse is the [0, 1]-scale mean over all pixels of the split, psnr is of that mean
    recon = model.decode_tokens(model.tokenize(x))
    mse01 = float(((recon - x) / 2).square().mean())
    assert after["mse"] == pytest.approx(mse01, rel=1e-5)
    assert after["psnr"] == pytest.approx(10 * math.log10(1 / mse01), rel=1e-5)


# -- save / load --------------------------------------------------------------------------------
def test_save_pretrained_round_trip(trained_small, tmp_path):
    model = trained_small.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = VQVAE.from_pretrained(tmp_path)
    def public(config):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()
                if not k.startswith("_")}

    assert public(loaded.config) == public(model.config)
    state, state2 = model.state_dict(), loaded.state_dict()
    assert state.keys() == state2.keys()
    for k in state:
        assert torch.equal(state[k], state2[k]), k
    for k in ("initted", "embed", "embed_avg", "cluster_size"):
        assert f"quantizer._codebook.{k}" in state
    assert loaded.codebook_initialized
    x = images(4, seed=30)
    tokens = model.tokenize(x)
    assert torch.equal(loaded.tokenize(x), tokens)
    assert torch.equal(loaded.decode_tokens(tokens), model.decode_tokens(tokens))
    model.train()


# -- metrics ------------------------------------------------------------------------------------
def test_codebook_usage_reference_values():
    u = codebook_usage(torch.tensor([0, 0, 1, 3]), codebook_size=4)
    # p = (1/2, 1/4, 0, 1/4): H = 1/2 ln 2 + 2 * 1/4 ln 4 = 3/2 ln 2, perplexity 2**1.5
    assert u["used"] == 3 and u["fraction"] == 0.75
    assert u["perplexity"] == pytest.approx(2 ** 1.5, rel=1e-12)
    assert codebook_usage(torch.arange(8).view(2, 2, 2), 8)["perplexity"] == pytest.approx(8)
    assert codebook_usage(torch.full((3, 7, 7), 5), 256) == {"used": 1, "fraction": 1 / 256,
                                                             "perplexity": 1.0}
    for bad in (torch.tensor([0, 4]), torch.tensor([-1, 0]), torch.tensor([0.0, 1.0]),
                torch.tensor([], dtype=torch.long)):
        with pytest.raises(ValueError):
            codebook_usage(bad, 4)
    with pytest.raises(ValueError):
        codebook_usage(torch.tensor([0]), 0)


def test_reconstruction_metrics_reference_values(monkeypatch):
    """Images of -0.5 or 0.5 reconstructed as -0.3 or 0.7: error 0.2 on [-1, 1], 0.1 on [0, 1] ->
    mse 0.01, PSNR 20 dB; tokens are 0 or 1 (49 each per image), three images of each."""
    model = seeded(0, **SMALL)
    x = torch.tensor([-0.5, 0.5, 0.5, -0.5, 0.5, -0.5]).view(6, 1, 1, 1).expand(6, 1, 28, 28)
    monkeypatch.setattr(model, "tokenize",
                        lambda im: (im[:, 0, 0, 0] > 0).long()[:, None].expand(-1, 49))
    monkeypatch.setattr(model, "decode_tokens",
                        lambda t: (t[:, :1].float() - 0.3).view(-1, 1, 1, 1).expand(-1, 1, 28, 28))
    m = reconstruction_metrics(model, x.contiguous(), batch_size=4)  # batches of 4 and 2
    assert m["mse"] == pytest.approx(0.01, rel=1e-6)  # float32 images: 0.7 - 0.5 is not 0.2 exactly
    assert m["psnr"] == pytest.approx(20.0, rel=1e-6)
    assert (m["codebook_used"], m["codebook_fraction"]) == (2, 2 / 64)
    assert m["codebook_perplexity"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        reconstruction_metrics(model, x * 3)
    with pytest.raises(ValueError, match="batch_size"):
        reconstruction_metrics(model, x, batch_size=0)


# -- mixed precision ----------------------------------------------------------------------------
def test_bf16_autocast_forward(trained_small):
    model = trained_small.train()
    x = images(8, seed=40)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            loss = F.mse_loss(out.sample.float(), x) + out.commit_loss
    loss.backward()
    assert torch.isfinite(out.sample.float()).all() and torch.isfinite(loss)
    assert out.commit_loss.dtype == torch.float32
    for name, b in model.named_buffers():
        assert b.dtype in (torch.float32, torch.bool) and torch.isfinite(b.float()).all(), name
    # the quantizer ignores autocast: the same z_e gives the same codes as in float32
    model.eval()
    with torch.no_grad():
        z_e = model.encode(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z_q_bf16, codes_bf16, _ = model.quantize(z_e)
            tokens = model.tokenize(x)
        z_q, codes, _ = model.quantize(z_e)
    assert torch.equal(codes_bf16, codes) and z_q_bf16.dtype == torch.float32
    assert tokens.shape == (8, 49)
    model.train()


def test_accelerate_bf16_prepared_model(fresh_accelerate_state):
    """The training loop's path: ``accelerator.prepare`` wraps forward in autocast and converts
    the outputs to float32 (rebuilding VQVAEOutput); the loss backpropagates."""
    from accelerate import Accelerator

    acc = Accelerator(mixed_precision="bf16", cpu=True)
    model = seeded(0, **SMALL)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    prepared, opt = acc.prepare(model, opt)
    x = images(4, seed=50)
    with torch.random.fork_rng(devices=[]), acc.autocast():
        torch.manual_seed(0)
        out = prepared(x)
        loss = F.mse_loss(out.sample, x) + out.commit_loss
    acc.backward(loss)
    opt.step()
    assert isinstance(out, VQVAEOutput) and out.sample.dtype == torch.float32
    assert out.indices.shape == (4, 7, 7) and out.indices.dtype == torch.int64
    assert torch.isfinite(loss) and model.codebook_initialized
    assert model.encoder[0].weight.grad is not None


# -- errors -------------------------------------------------------------------------------------
def test_bad_inputs_raise(trained_small):
    model = trained_small
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        model(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        model.tokenize(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError):
        model.encode(torch.zeros(1, 28, 28))
    with pytest.raises(ValueError):
        model.encode(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 16, 7, 7\)"):
        model.quantize(torch.zeros(1, 8, 7, 7))
    with pytest.raises(ValueError, match=r"\(B, 16, 7, 7\)"):
        model.decode(torch.zeros(1, 16, 8, 8))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.decode_tokens(torch.full((1, 49), 64))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.decode_tokens(torch.full((1, 49), -1))
    with pytest.raises(ValueError, match=r"\(B, 49\)"):
        model.decode_tokens(torch.zeros(1, 48, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model.decode_tokens(torch.zeros(1, 49))


@pytest.mark.parametrize("kwargs", [
    dict(image_size=30), dict(channels=()), dict(channels=(8, 0)), dict(in_channels=0),
    dict(codebook_size=1), dict(codebook_dim=0), dict(ema_decay=1.0), dict(ema_decay=0.0),
    dict(num_res_blocks=-1), dict(commitment_weight=-0.1), dict(threshold_ema_dead_code=-1)])
def test_bad_constructor_args_raise(kwargs):
    with pytest.raises(ValueError):
        VQVAE(**kwargs)


def test_module_doctest():
    result = doctest.testmod(vqvae_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# -- distributed --------------------------------------------------------------------------------
DDP_SCRIPT = r'''
import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
sys.path.insert(0, REPO)

def work(rank, world, port, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from diffusion.models.vqvae import VQVAE
    torch.manual_seed(0)  # same initial weights on both processes
    model = VQVAE(channels=(8, 16), codebook_size=64, codebook_dim=8)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters(), 1e-3)
    torch.manual_seed(100 + rank)  # different data and k-means/restart draws per process
    for _ in range(5):
        x = torch.rand(rank + 1, 1, 28, 28) * 2 - 1  # unequal batches: 49 and 98 vectors < 64 codes
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ddp(x)
            loss = ((out.sample.float() - x) ** 2).mean() + out.commit_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    cb = model.quantizer._codebook
    torch.save({"use_ddp": cb.use_ddp, "embed": cb.embed, "cluster_size": cb.cluster_size,
                "embed_avg": cb.embed_avg}, os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()

if __name__ == "__main__":
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(work, args=(2, port, sys.argv[1]), nprocs=2)
'''


@pytest.mark.slow
def test_codebook_stays_in_sync_under_ddp(tmp_path):
    """Two gloo processes with different data: the codebook syncs (EMA all-reduce, k-means and
    restarts drawn from both), so both hold identical codebook buffers; bf16 autocast on."""
    import subprocess
    import sys

    repo = str(Path(vqvae_module.__file__).resolve().parents[1])
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.replace("REPO", repr(repo)))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                          text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["use_ddp"] and r1["use_ddp"]
    for k in ("embed", "cluster_size", "embed_avg"):
        assert torch.isfinite(r0[k]).all() and torch.equal(r0[k], r1[k]), k


def test_numpy_int_arguments_are_saved_as_plain_ints(tmp_path):
    """Accepted numpy ints must not reach config.json (json cannot write them: a failed save
    after training would lose the run)."""
    import numpy as np

    model = VQVAE(codebook_size=np.int64(16), codebook_dim=np.int32(8), channels=(8, 8))
    model.save_pretrained(tmp_path)
    config = VQVAE.from_pretrained(tmp_path).config
    assert (config.codebook_size, config.codebook_dim) == (16, 8)
    assert type(config.codebook_size) is int
