"""The patch discriminator and hinge losses of the paper's first-stage objective.

diffusers ships autoencoders but no adversarial training parts, so this small module is
written here, after the PatchGAN of Isola et al. (2017) that Esser et al. (2021) and the
LDM repository use: strided 4x4 convolutions whose output is a grid of real/fake logits,
one per overlapping image patch. Judging patches rather than whole images pushes the
decoder towards locally realistic texture, which L1 alone blurs away.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ADAPTIVE_WEIGHT_MAX = 1e4  # the LDM repository's clamp of the adaptive weight


def patch_layers(resolution: int, most: int = 3) -> int:
    """The paper's 3 blocks, fewer for small images so at least a 1x1 grid of patch logits remains."""
    return max(1, min(most, int(math.log2(resolution / 3))))


class PatchDiscriminator(nn.Module):
    """PatchGAN with ``layers`` strided blocks (the paper's n_layers = 3, ndf = 64)."""

    def __init__(self, image_channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        if layers < 1:
            raise ValueError(f"A patch discriminator needs at least one block (got {layers}).")
        blocks: list[nn.Module] = [nn.Conv2d(image_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1
            blocks += [nn.Conv2d(width * prev, width * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(width * mult), nn.LeakyReLU(0.2, True)]
        blocks.append(nn.Conv2d(width * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)
        for m in self.modules():  # the DCGAN initialisation the PatchGAN was trained with
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def adaptive_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                    delta: float = 1e-4) -> torch.Tensor:
    """λ = ‖∇L_rec‖ / (‖∇L_GAN‖ + δ) at the decoder's last layer (Esser et al. 2021, eq. 7).

    Balances the adversarial gradient against the reconstruction gradient whatever their
    scales; detached, so it is a weight and not something to optimise.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (gan_grad.norm() + delta)
    return weight.clamp(0.0, ADAPTIVE_WEIGHT_MAX).detach()
