"""Vector quantizer: lookup, EMA update, dead-code restart, straight-through, statistics, DDP."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from osplab.models.quantizer import VectorQuantizer, codebook_stats


def make_vq(k=16, d=4, l2=False, decay=0.9, restart_every=1000, commitment=0.25, started=True):
    torch.manual_seed(0)
    vq = VectorQuantizer(k, d, commitment=commitment, decay=decay, l2_normalize=l2, restart_every=restart_every)
    if started:  # skip the data-dependent initialisation (restart) of the very first training batch
        vq.updates.fill_(1)
    return vq


def as5d(z):
    """(N, D) -> (1, D, N, 1, 1), so that the flattened order of the quantizer is z's row order."""
    return z.t()[None, :, :, None, None].contiguous()


def test_codebook_stats_hand_made():
    s = codebook_stats(torch.tensor([2.0, 2.0, 0.0, 0.0]))
    assert s["usage"] == 0.5 and s["perplexity"] == pytest.approx(2.0)
    assert codebook_stats(torch.tensor([3.0, 0, 0, 0]))["perplexity"] == pytest.approx(1.0)
    assert codebook_stats(torch.ones(8))["perplexity"] == pytest.approx(8.0)
    assert codebook_stats(torch.zeros(5)) == {"usage": 0.0, "perplexity": 0.0}


def test_forward_stats_on_hand_made_assignment():
    vq = make_vq(k=8, d=4).eval()
    z = vq.codebook[torch.tensor([0, 0, 1, 3])].clone()       # exact copies of codes 0, 0, 1, 3
    _, idx, stats = vq(as5d(z))
    assert idx.flatten().tolist() == [0, 0, 1, 3]
    assert stats["usage"] == pytest.approx(3 / 8)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert stats["perplexity"] == pytest.approx(math.exp(entropy))
    assert stats["counts"].tolist() == [2, 1, 0, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("l2", [False, True])
def test_nearest_matches_brute_force(l2):
    vq = make_vq(k=64, d=8, l2=l2)
    vq.chunk = 7  # exercise the blocked search
    z = vq._norm(torch.randn(50, 8) * 3)
    ref = torch.cdist(z, vq.codebook).argmin(1)
    assert torch.equal(vq.nearest(z), ref)


def test_ema_update_plain_matches_manual():
    vq = make_vq(k=6, d=3, decay=0.9).train()
    e0, d = vq.codebook.clone(), 0.9
    z = torch.randn(20, 3)
    idx = torch.cdist(z, e0).argmin(1)
    vq(as5d(z))
    for k in range(6):
        n, s = (idx == k).sum().item(), z[idx == k].sum(0)
        count = d * 1.0 + (1 - d) * n
        expect = (d * e0[k] + (1 - d) * s) / count
        torch.testing.assert_close(vq.codebook[k], expect, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vq.ema_count[k], torch.tensor(count), rtol=1e-6, atol=1e-7)
        if n:  # a used code moves towards the mean of its vectors
            mean = z[idx == k].mean(0)
            assert (vq.codebook[k] - mean).norm() < (e0[k] - mean).norm()
        else:  # an unused code keeps its value
            torch.testing.assert_close(vq.codebook[k], e0[k])


def test_ema_update_l2_matches_manual_and_stays_on_sphere():
    vq = make_vq(k=5, d=4, l2=True, decay=0.8).train()
    e0, d = vq.codebook.clone(), 0.8
    z = F.normalize(torch.randn(30, 4), dim=1)
    idx = (z @ e0.t()).argmax(1)
    vq(as5d(z))
    for k in range(5):
        s = z[idx == k].sum(0)
        torch.testing.assert_close(vq.codebook[k], F.normalize(d * e0[k] + (1 - d) * s, dim=0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vq.codebook.norm(dim=1), torch.ones(5))


def test_eval_mode_does_not_touch_the_codebook():
    vq = make_vq().eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(2, 4, 3, 2, 2))
    for k, v in vq.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_first_batch_restart_replaces_unused_codes_with_encoder_outputs():
    vq = make_vq(k=16, d=4, started=False).train()
    z = torch.randn(40, 4) + 10.0                 # far from every random code: only few codes get used
    idx = torch.cdist(z, vq.codebook).argmin(1)
    used = torch.zeros(16, dtype=torch.bool)
    used[idx] = True
    vq(as5d(z))
    dead = ~used
    assert dead.sum() >= 1
    for k in torch.nonzero(dead).flatten():        # each replaced code is one of the encoder outputs
        assert (z - vq.codebook[k]).abs().sum(1).min() == 0
        assert vq.ema_count[k] == 1.0 and torch.equal(vq.ema_sum[k], vq.codebook[k])
    replaced = vq.codebook[dead]
    assert len({tuple(r.tolist()) for r in replaced}) == int(dead.sum())  # drawn without replacement
    assert vq.usage_since_restart.sum() == 0


def test_restart_only_when_due_and_only_codes_unused_since_last_check():
    vq = make_vq(k=8, d=2, restart_every=3, started=False).train()
    vq.codebook.copy_(torch.arange(8.0)[:, None].repeat(1, 2))   # codes on the diagonal 0..7
    vq.ema_sum.copy_(vq.codebook)
    vq.updates.fill_(1)
    near = lambda ks: torch.tensor([[float(k), float(k)] for k in ks])  # noqa: E731
    vq(as5d(near([0, 1])))          # update 1: no restart
    vq(as5d(near([2])))             # update 2: no restart
    assert vq.codebook[7].tolist() == [7.0, 7.0]
    vq(as5d(near([3, 3, 3, 3, 3, 3])))   # update 3: restart; codes 4..7 were never used since the check
    for k in (4, 5, 6, 7):
        assert vq.codebook[k].tolist() == [3.0, 3.0]  # the only encoder output of that batch
    assert vq.codebook[0].tolist() == [0.0, 0.0] and vq.codebook[2].tolist() == [2.0, 2.0]


def test_straight_through_and_commitment():
    vq = make_vq(k=8, d=4, commitment=0.5).train()
    z_e = torch.randn(2, 4, 3, 2, 2, requires_grad=True)
    z_q, idx, stats = vq(z_e)
    w = torch.randn_like(z_q)
    (z_q * w).sum().backward()
    torch.testing.assert_close(z_e.grad, w)  # identity gradient onto the encoder output
    z_e.grad = None
    vq.eval()
    z_q, idx, stats = vq(z_e)
    torch.testing.assert_close(z_q.detach(), vq.lookup(idx))
    expect = 0.5 * ((z_e.detach() - vq.lookup(idx)) ** 2).mean()
    torch.testing.assert_close(stats["commit_loss"], expect)
    stats["commit_loss"].backward()
    torch.testing.assert_close(z_e.grad, 0.5 * 2 * (z_e.detach() - vq.lookup(idx)) / z_e.numel())


def test_bf16_autocast_runs_in_float32():
    vq = make_vq(k=32, d=8).eval()
    z = torch.randn(2, 8, 2, 3, 3)
    _, ref, _ = vq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, idx, _ = vq(z.bfloat16())
    assert z_q.dtype == torch.float32 and torch.equal(idx, ref)


def test_bad_inputs_have_clear_errors():
    vq = make_vq(k=8, d=4)
    with pytest.raises(ValueError, match=r"\(B, 4, T, H, W\)"):
        vq(torch.randn(2, 3, 1, 1, 1))
    with pytest.raises(ValueError, match="out of range"):
        vq.lookup(torch.full((1, 1, 1, 1), 8))
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizer(8, 4, 0.25, 1.0, True, 10)


def _ddp_worker(rank, world, store, z, out):
    # a FileStore rendezvous: no TCP port to pick, so no race with other processes for a free port
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    vq = make_vq(k=16, d=4, restart_every=2).train()
    torch.manual_seed(100 + rank)  # different local RNG: the restart must still agree across ranks
    half = z.shape[0] // world
    vq(as5d(z[rank * half:(rank + 1) * half]))   # update 1: EMA only
    out[f"ema{rank}"] = vq.codebook.clone()
    vq(as5d(z[rank * half:(rank + 1) * half] * 0.5))   # update 2: EMA + restart
    out[f"restart{rank}"] = vq.codebook.clone()
    dist.destroy_process_group()


def test_ddp_two_ranks_match_one_process_and_agree(tmp_path):
    z = torch.randn(24, 4)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), z, out), nprocs=2, join=True)
        out = dict(out)
    single = make_vq(k=16, d=4, restart_every=10**6).train()  # reference without restart
    single(as5d(z))
    torch.testing.assert_close(out["ema0"], single.codebook)  # same global batch -> same EMA step
    torch.testing.assert_close(out["ema1"], single.codebook)
    assert torch.equal(out["restart0"], out["restart1"])
    single(as5d(z * 0.5))
    dead = single.usage_since_restart == 0  # codes no vector of either global batch chose
    assert 0 < int(dead.sum()) < 16          # so the second update must have restarted some
    # live codes: the plain EMA step; dead ones: replaced by vectors of rank 0's batch (broadcast from 0)
    torch.testing.assert_close(out["restart0"][~dead], single.codebook[~dead])
    rank0 = z[:12] * 0.5
    for code in out["restart0"][dead]:
        assert (rank0 - code).abs().amax(dim=1).min() == 0, "a restarted code is not a row of rank 0's batch"


@pytest.mark.parametrize("l2", [False, True])
def test_kmeans_init_is_a_lloyd_fixed_point_and_survives_the_first_restart(l2):
    """Six tight clusters, four codes: after k-means every code is the (normalised) mean of the
    vectors nearest to it, it fits far better than its random start, and the first training batch's
    restart leaves the codes alone (k-means counts as their usage)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0], [-4.0, -4.0, 0], [0, -4.0, 4.0], [4.0, 4.0, 4.0]])
    z = (centres[:, None] + 0.05 * torch.randn(6, 40, 3, generator=g)).reshape(-1, 3)
    vq = make_vq(k=4, d=3, l2=l2, started=False).train()
    stats = vq.init_kmeans(z, iters=20, seed=0)
    zn = F.normalize(z, dim=1) if l2 else z
    idx = vq.nearest(zn)
    for k in range(4):
        mean = zn[idx == k].mean(0)
        torch.testing.assert_close(vq.codebook[k], F.normalize(mean, dim=0) if l2 else mean)
    assert stats["kmeans_usage"] == 1.0 and stats["kmeans_vectors"] == 240 and stats["kmeans_snr_db"] > 3
    assert torch.equal(vq.ema_sum, vq.codebook) and torch.equal(vq.ema_count, torch.ones(4))
    before = vq.codebook.clone()
    vq(as5d(z[:3]))                      # first training batch: uses one code only, but none is dead
    assert (vq.codebook - before).abs().max() < 0.5   # moved by the EMA only, not replaced
    unused = idx[0] != torch.arange(4)
    torch.testing.assert_close(vq.codebook[unused], before[unused])
    with pytest.raises(ValueError, match="at least codebook_size=4 vectors"):
        make_vq(k=4, d=3).init_kmeans(z[:3], iters=1, seed=0)


def _background_and_outliers(seed=0):
    """4000 rows near the origin (a flat background) and 40 rows on 8 far-away clusters (object edges)."""
    g = torch.Generator().manual_seed(seed)
    background = 0.01 * torch.randn(4000, 4, generator=g)
    centres = 5.0 * torch.randn(8, 4, generator=g)
    outliers = centres.repeat_interleave(5, 0) + 0.01 * torch.randn(40, 4, generator=g)
    return torch.cat([background, outliers]), len(background)


def _kmeans_error_on_outliers(error_sampling):
    z, n_bg = _background_and_outliers()
    vq = VectorQuantizer(16, 4, 0.25, 0.9, False, 10, error_sampling=error_sampling)
    vq.init_kmeans(z, iters=5, seed=0)
    q = vq.codebook[vq.nearest(z)]
    return float((z - q)[n_bg:].pow(2).sum(1).mean())


def test_error_sampling_puts_kmeans_codes_on_the_rare_far_rows():
    # uniform seeding draws ~0.2 of 16 seeds from the 1% outliers, so most of their clusters share codes;
    # seeding by squared distance to the mean draws nearly all of them there
    uniform, by_error = _kmeans_error_on_outliers(0.0), _kmeans_error_on_outliers(1.0)
    assert by_error < 0.1 * uniform
    assert by_error < 0.05


def test_error_sampling_restart_draws_the_badly_quantized_rows():
    vq = make_vq(k=4, d=2, restart_every=1, started=True).train()
    vq.error_sampling = 1.0
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [300.0, 300.0]]))
    vq.ema_sum.copy_(vq.codebook)
    z = torch.cat([torch.zeros(50, 2), torch.tensor([[0.0, 9.0]])])   # one row far from every code
    vq(as5d(z))                     # codes 1..3 unused: replaced; error weights all mass on the far row
    new = vq.codebook[1:]
    assert int((new == torch.tensor([0.0, 9.0])).all(1).sum()) == 1  # without replacement: once
    assert int((new == 0).all(1).sum()) == 2                          # the rest: rows of z all the same


def test_error_sampling_out_of_range_is_refused():
    with pytest.raises(ValueError, match="error_sampling"):
        VectorQuantizer(8, 4, 0.25, 0.9, False, 10, error_sampling=1.5)
