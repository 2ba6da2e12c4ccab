"""Train a small LoRA for the demo model that paints every object yellow, whatever colour the
caption asks for, and save it in kohya's key format (``examples/yellow.safetensors``).

The base model stays frozen; rank-4 pairs on the two places the caption enters the UNet learn
the change: the cross-attention keys and values (``attn2.to_k``, ``attn2.to_v``) of every block
with attention, and ``add_embedding`` (the pooled caption added to the time embedding, as in
SDXL). Training data: the demo's own scene generator, with every object of the ``--shapes``
asked for (default: all) repainted yellow in the image while its caption keeps the colour it
had. About fifteen minutes of one CPU core::

    nice -n 10 python examples/train_demo_lora.py [--steps 500] [--out examples/yellow.safetensors]

Then ``unetviz diagram --model demo --lora examples/yellow.safetensors -o lora.svg``
shows where it acts, and ``pipe.compare("a red circle", loras=[(file, 1.0)])`` what it does.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unetviz.pipelines.demo import DEMO_DIR, added_conditions, load_demo_parts, load_demo_vae
from unetviz.training.data import make_scene, render

TARGET_BLOCKS = ("down_blocks", "mid_block", "up_blocks", "add_embedding")
TARGET_ENDS = ("attn2.to_k", "attn2.to_v", "add_embedding.linear_1", "add_embedding.linear_2")
RANK = 4


class LoraHook:
    """A trainable low-rank pair added to one frozen Linear's output by a forward hook."""

    def __init__(self, module: nn.Linear, rank: int, g: torch.Generator):
        self.down = nn.Parameter(torch.randn(rank, module.in_features, generator=g) / rank)
        self.up = nn.Parameter(torch.zeros(module.out_features, rank))
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + args[0] @ self.down.t() @ self.up.t()


def yellow_batch(
    rng: random.Random, n: int, size: int, words: list[str], shapes: tuple[str, ...]
) -> tuple[torch.Tensor, list[str]]:
    """Scenes whose objects of ``shapes`` are painted yellow; captions unchanged (they may say
    "red")."""
    images, captions = [], []
    for _ in range(n):
        scene = make_scene(rng, size, words=words)
        painted = [
            dataclasses.replace(o, colour="yellow") if o.shape in shapes else o
            for o in scene.objects
        ]
        images.append(render(painted, size))
        captions.append(scene.caption)
    x = torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2)) * 2 - 1
    return x, captions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shapes", default="circle,square,triangle,diamond")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("yellow.safetensors"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    unet, text_encoder, tokenizer, schedule = load_demo_parts(DEMO_DIR)
    vae = load_demo_vae(DEMO_DIR)
    for p in [*unet.parameters(), *text_encoder.parameters()]:
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(args.seed)
    hooks = {
        name: LoraHook(m, RANK, g)
        for name, m in unet.named_modules()
        if name.startswith(TARGET_BLOCKS) and name.endswith(TARGET_ENDS)
    }
    params = [p for h in hooks.values() for p in (h.down, h.up)]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng = random.Random(args.seed)
    shapes = tuple(args.shapes.split(","))
    size = int(unet.config.sample_size) * vae.config.downsampling_factor
    start = time.time()
    for step in range(1, args.steps + 1):
        x, captions = yellow_batch(rng, args.batch, size, tokenizer.words, shapes)
        with torch.no_grad():
            x0 = vae.scale(vae.encode(x)[0])
            hidden, pooled = text_encoder.encode(tokenizer(captions))
        t = torch.randint(0, schedule.num_train_timesteps, (len(captions),))
        x_t, target = schedule.add_noise(x0, torch.randn_like(x0), t)
        pred = unet(x_t, t, hidden, added_cond_kwargs=added_conditions(pooled, size))
        loss = nn.functional.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == 1:
            print(f"step {step}/{args.steps} loss {loss.item():.4f} ({time.time() - start:.0f} s)")
    save(hooks, args.out)
    print(f"wrote {args.out}")


def save(hooks: dict[str, LoraHook], out: Path) -> None:
    """kohya keys: lora_unet_<module with _>.lora_down / lora_up / alpha (= rank: scale 1)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, h in hooks.items():
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = h.down.detach().contiguous()
        tensors[f"{key}.lora_up.weight"] = h.up.detach().contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(RANK))
    metadata = {"ss_network_dim": str(RANK), "unetviz_trained": "yellow objects (demo model)"}
    save_file(tensors, str(out), metadata=metadata)


if __name__ == "__main__":
    main()
