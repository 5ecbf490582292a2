"""The toy preset's generator (README "The toy preset"): PacGAN's 4 x 400 ReLU + BatchNorm G.

With the Diffusion-GAN / SMaRt paper MLP as G (2 x 128 LeakyReLU, the old preset) the vanilla GAN put
most of its samples along the border of the 25-Gaussian square (``benchmarks/toy_rootcause.py``); these
tests pin the preset's choice and the BatchNorm generator's inference behaviour.
"""
import torch

from ganstack.stylegan_base.networks import MLPGenerator
from ganstack.training.config import TrainConfig, resolve
from ganstack.training.nets import backbone_kwargs

POINTS = dict(kind="points", point_dim=2, resolution=None)


def _layers(G):
    return [type(m).__name__ for m in G.body]


def test_toy_preset_builds_pacgan_generator():
    cfg = resolve(TrainConfig(data="toy:gaussians25"), POINTS)
    assert cfg.cfg == "toy" and cfg.mlp_g == "pacgan"
    G_kwargs, D_kwargs = backbone_kwargs(cfg, POINTS)
    G = MLPGenerator(**G_kwargs)
    assert _layers(G) == ["Linear", "BatchNorm1d", "ReLU"] * 4
    assert all(m.out_features == 400 for m in G.body if isinstance(m, torch.nn.Linear))
    # D stays the paper's MLP (2 x 128 LeakyReLU).
    assert D_kwargs["hidden"] == 128 and D_kwargs["num_hidden_layers"] == 2 and "batchnorm" not in D_kwargs


def test_paper_generator_and_old_checkpoints():
    cfg = resolve(TrainConfig(data="toy:gaussians25", mlp_g="paper"), POINTS)
    G = MLPGenerator(**backbone_kwargs(cfg, POINTS)[0])
    assert _layers(G) == ["Linear", "LeakyReLU"] * 2
    # A checkpoint written before --mlp-g existed has no mlp_g: it rebuilds the paper G it was trained with.
    old = TrainConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "mlp_g"})
    assert old.mlp_g is None
    assert _layers(MLPGenerator(**backbone_kwargs(old, POINTS)[0])) == ["Linear", "LeakyReLU"] * 2


def test_bad_mlp_g_is_a_clear_error():
    import pytest
    from ganstack.training.api import ConfigError
    with pytest.raises(ConfigError, match="--mlp-g must be one of paper, pacgan"):
        resolve(TrainConfig(data="toy:gaussians25", mlp_g="wide"), POINTS)


def test_batchnorm_generator_sample_does_not_depend_on_its_batch_in_eval():
    torch.manual_seed(0)
    G = MLPGenerator(z_dim=8, out_dim=2, hidden=16, num_hidden_layers=2, activation="relu", batchnorm=True)
    for _ in range(5):  # training steps update the running statistics
        G(torch.randn(64, 8) * 3 + 1)
    z = torch.randn(10, 8)
    G.eval()  # G_ema is in eval mode (training.nets.build_networks); generate one sample or many alike
    with torch.no_grad():
        together = G(z)
        alone = torch.cat([G(z[i:i + 1]) for i in range(10)])
    assert torch.allclose(together, alone, atol=1e-6)
    G.train()
    with torch.no_grad():
        assert not torch.allclose(G(z), together, atol=1e-3)  # training mode uses the batch's statistics
