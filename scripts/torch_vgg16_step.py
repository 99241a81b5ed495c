"""PyTorch reference for `vmem run vgg16`: one SGD training step of VGG-16
(configuration D of Simonyan & Zisserman, built here with torch.nn so that
torchvision is not needed), timed on CUDA; prints one JSON object.

    python3 scripts/torch_vgg16_step.py [--batch 64] [--steps 10] [--warmup 3]

step_ms is the median of the timed steps (after the warm-up steps), each timed
with CUDA events around zero_grad, forward, loss, backward and the SGD update;
peak_bytes is torch.cuda.max_memory_allocated over the timed steps (weights,
gradients, momentum and activations: what the caching allocator handed out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

# Configuration D: output channels of each 3x3 convolution, "M" a 2x2 max pool.
VGG16_D: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                  512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(torch_nn: Any, classes: int = 1000) -> Any:
    """VGG-16 for 224x224 inputs; `torch_nn` is torch.nn (imported lazily)."""
    layers: list[Any] = []
    channels = 3
    for item in VGG16_D:
        if item == "M":
            layers.append(torch_nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [torch_nn.Conv2d(channels, int(item), kernel_size=3, padding=1),
                       torch_nn.ReLU(inplace=True)]
            channels = int(item)
    return torch_nn.Sequential(
        *layers, torch_nn.Flatten(),
        torch_nn.Linear(512 * 7 * 7, 4096), torch_nn.ReLU(inplace=True), torch_nn.Dropout(0.5),
        torch_nn.Linear(4096, 4096), torch_nn.ReLU(inplace=True), torch_nn.Dropout(0.5),
        torch_nn.Linear(4096, classes))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()

    try:
        import torch
    except ImportError as exc:
        print(json.dumps({"framework": "pytorch", "error": f"torch cannot be imported: {exc}"}))
        return 1
    if not torch.cuda.is_available():
        print(json.dumps({"framework": "pytorch", "torch": torch.__version__,
                          "error": "torch.cuda.is_available() is False"}))
        return 1

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = vgg16(torch.nn).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                                weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)

    def step() -> Any:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    model.train()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()

    times_ms, losses = [], []
    for _ in range(args.steps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        loss = step()
        end.record()
        end.synchronize()
        times_ms.append(start.elapsed_time(end))
        losses.append(float(loss.item()))

    result = {
        "framework": "pytorch", "torch": torch.__version__, "model": "vgg16 (configuration D)",
        "device": torch.cuda.get_device_name(device), "batch": args.batch,
        "warmup_steps": args.warmup, "steps": args.steps,
        "step_ms": statistics.median(times_ms), "steps_ms": times_ms,
        "peak_bytes": int(torch.cuda.max_memory_allocated(device)),
        "reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
        "losses": losses,
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
