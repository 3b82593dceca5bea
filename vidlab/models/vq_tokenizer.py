"""Frame tokenizers for VIMPAC: one interface, the DALL-E dVAE encoder and a small trainable VQ-VAE behind it.

- `FrameTokenizer`: `tokenize(frames (N, 3, H, W) in [-1, 1], batch_size) -> (N, H/f, W/f) int64 codes`,
  `vocab_size`, `downsample` (f). `vidlab.models.dalle_encoder.DalleEncoder` (8x, 8192 codes) answers it;
  `load_tokenizer(path)` opens any model file or folder `create_model` reads (the released `encoder.pkl`, a
  vidlab model folder such as a `vqvae` run's `model/`) and checks that it is a tokenizer.
- `VQVAE` (family `vqvae`): a conv encoder (`downsample` = 2^k stride-2 convs + a residual block) to `code_dim`
  vectors, a codebook of `vocab_size` codes (nearest code in L2, straight-through gradients, codebook loss +
  `beta` x commitment loss as in van den Oord et al. 2017; codes unused for a training batch are restarted
  at random encoder outputs so none stays dead; under DDP the codes dead on every process, rank 0's draw), and
  the mirrored decoder. Small enough to fit ShapesBench on
  a CPU in a few hundred steps, so VIMPAC runs end to end with no downloads (`vidlab train` recipe `vqvae`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from vidlab.errors import ConfigError
from vidlab.models.clip import unchanged_state_dict
from vidlab.models.errors import ModelInputError
from vidlab.models.factory import ModelFamily, register_family

FAMILY = "vqvae"


@runtime_checkable
class FrameTokenizer(Protocol):
    vocab_size: int

    @property
    def downsample(self) -> int: ...

    def tokenize(self, frames: Tensor, batch_size: int | None = None) -> Tensor: ...


@dataclass
class VQVAEConfig:
    family: str = FAMILY
    vocab_size: int = 64  # codebook entries (the token ids 0..vocab_size-1)
    code_dim: int = 32
    hidden: int = 64
    downsample: int = 8  # a power of 2: one stride-2 conv per factor 2
    beta: float = 0.25  # commitment weight


class ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


@dataclass
class VQOutput:
    reconstruction: Tensor  # (N, 3, H, W)
    codes: Tensor  # (N, h, w) int64
    loss_recon: Tensor
    loss_vq: Tensor  # codebook + beta x commitment


class VQVAE(nn.Module):
    def __init__(self, cfg: DictConfig):
        super().__init__()
        steps = int(math.log2(cfg.downsample))
        if 2**steps != cfg.downsample or steps < 1:
            raise ConfigError(f"downsample must be a power of 2 >= 2, got {cfg.downsample}")
        self.vocab_size, self.beta, self._downsample = int(cfg.vocab_size), float(cfg.beta), int(cfg.downsample)
        h = cfg.hidden
        enc: list[nn.Module] = [nn.Conv2d(3, h, 4, stride=2, padding=1)]
        for _ in range(steps - 1):
            enc += [nn.ReLU(), nn.Conv2d(h, h, 4, stride=2, padding=1)]
        self.encoder = nn.Sequential(*enc, ResBlock(h), nn.ReLU(), nn.Conv2d(h, cfg.code_dim, 1))
        self.codebook = nn.Embedding(cfg.vocab_size, cfg.code_dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / cfg.vocab_size, 1.0 / cfg.vocab_size)
        dec: list[nn.Module] = [nn.Conv2d(cfg.code_dim, h, 3, padding=1), ResBlock(h)]
        for _ in range(steps - 1):
            dec += [nn.ReLU(), nn.ConvTranspose2d(h, h, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*dec, nn.ReLU(), nn.ConvTranspose2d(h, 3, 4, stride=2, padding=1))

    @property
    def downsample(self) -> int:
        return self._downsample

    def _check(self, frames: Tensor) -> None:
        if frames.dim() != 4 or frames.shape[1] != 3 or frames.shape[-1] % self.downsample or frames.shape[-2] % self.downsample:
            raise ModelInputError(
                f"frames must be (N, 3, H, W) with H and W multiples of {self.downsample}, got {tuple(frames.shape)}"
            )

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(N, D, h, w) encoder outputs -> (codes (N, h, w), code vectors (N, D, h, w))."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        book = self.codebook.weight
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.T + book.pow(2).sum(1)[None]
        codes = distances.argmin(1)
        vectors = self.codebook(codes).view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        return codes.view(z.shape[0], z.shape[2], z.shape[3]), vectors

    @torch.no_grad()
    def _restart_dead_codes(self, z: Tensor, codes: Tensor) -> None:
        used = torch.bincount(codes.flatten(), minlength=self.vocab_size) > 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            used = used.float()
            torch.distributed.all_reduce(used)  # dead on every process
            used = used > 0
        dead = (~used).nonzero().flatten()
        if len(dead):
            flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            self.codebook.weight[dead] = flat[torch.randint(len(flat), (len(dead),), device=flat.device)]
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.broadcast(self.codebook.weight, 0)  # every process keeps rank 0's codebook

    def forward(self, frames: Tensor) -> VQOutput:
        """Frames in [-1, 1] -> reconstruction, codes and the two loss terms."""
        self._check(frames)
        z = self.encoder(frames)
        codes, vectors = self.quantize(z)
        loss_vq = F.mse_loss(vectors, z.detach()) + self.beta * F.mse_loss(z, vectors.detach())
        if self.training:
            self._restart_dead_codes(z, codes)
        reconstruction = self.decoder(z + (vectors - z).detach())
        return VQOutput(reconstruction, codes, F.mse_loss(reconstruction, frames), loss_vq)

    @torch.no_grad()
    def tokenize(self, frames: Tensor, batch_size: int | None = None) -> Tensor:
        """(N, 3, H, W) frames in [-1, 1] -> (N, H/f, W/f) int64 codes (the FrameTokenizer interface)."""
        self._check(frames)
        device = self.codebook.weight.device
        chunks = frames.split(batch_size) if batch_size else (frames,)
        return torch.cat([self.quantize(self.encoder(c.to(device).float()))[0].cpu() for c in chunks])

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """(N, h, w) codes -> (N, 3, H, W) frames in about [-1, 1]."""
        return self.decoder(self.codebook(codes).permute(0, 3, 1, 2))


def build_vqvae(cfg: DictConfig, init_weights: bool = True) -> VQVAE:
    for key in ("vocab_size", "code_dim", "hidden", "downsample"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    return VQVAE(cfg)


def load_tokenizer(source: str, device: str | torch.device = "cpu") -> FrameTokenizer:
    """The tokenizer in a model file or folder (`create_model`), in eval mode on `device`."""
    from vidlab.models.factory import create_model

    model = create_model(checkpoint=source)
    if not isinstance(model, FrameTokenizer):
        raise ConfigError(f"{source}: a {type(model).__name__} is not a frame tokenizer (expected a DALL-E encoder or a vqvae model)")
    return model.to(device).eval()  # type: ignore[return-value]


register_family(
    ModelFamily(
        name=FAMILY,
        config_class=VQVAEConfig,
        build=build_vqvae,
        adapt_state_dict=unchanged_state_dict,
        size_keys=("vocab_size", "code_dim", "hidden", "downsample"),
    )
)

__all__ = ["FrameTokenizer", "VQVAE", "VQVAEConfig", "VQOutput", "build_vqvae", "load_tokenizer"]
