"""Train gpt2-tiny as a byte-level language model on Python's own source, then sample.

    python examples/train_tiny_gpt.py [--device auto|cpu|cuda] [--steps 300] [--batch 16]

The text is the source of a few standard-library modules, read from this Python's
installation (nothing is downloaded): about 100 KB of bytes, each a token of
gpt2-tiny's vocabulary of 256. Each step trains on random windows of 33 bytes
(32 inputs and their next bytes); the last tenth of the text is held out, and the
loss on it is printed beside the training loss. A model that knows nothing scores
ln(256) = 5.55 nats a byte.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import math
import textwrap
from pathlib import Path

import numpy as np

import vmem

try:  # installed with scikit-learn (vmem's test extra)
    from threadpoolctl import threadpool_limits
except ImportError:
    threadpool_limits = None

SOURCES = (textwrap, difflib)  # pure Python, prose-heavy docstrings and code
PROFILE = "gpt2-tiny"
UNIFORM_LOSS = math.log(256)


def load_text() -> np.ndarray:
    """The modules' source files as one array of bytes (token ids 0-255)."""
    data = b"\n".join(Path(module.__file__).read_bytes() for module in SOURCES)
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64)


def windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (N, T) and next-byte labels (N, T) of windows starting at `starts`."""
    rows = tokens[starts[:, None] + np.arange(length + 1)]
    return rows[:, :-1], rows[:, 1:]


def held_out_loss(runtime: vmem.Runtime, tokens: np.ndarray, length: int, batch: int) -> float:
    """Mean next-byte loss over consecutive windows of the held-out text."""
    starts = np.arange(0, len(tokens) - length - 1, length)[:4 * batch]
    x, y = windows(tokens, starts, length)
    probabilities = runtime.evaluate(x)
    picked = np.take_along_axis(probabilities, y[..., None], axis=-1)[..., 0]
    return float(-np.log(np.maximum(picked, 1e-30)).mean())


def sample(runtime: vmem.Runtime, prompt: np.ndarray, count: int, length: int,
           rng: np.random.Generator, temperature: float = 0.8) -> bytes:
    """`count` bytes after `prompt` (at least `length` bytes), each drawn from the
    model's next-byte distribution given the `length` bytes before it."""
    text = list(prompt)
    for _ in range(count):
        context = np.array(text[-length:], dtype=np.int64)[None, :]
        p = runtime.evaluate(context)[0, -1].astype(np.float64) ** (1.0 / temperature)
        text.append(int(rng.choice(256, p=p / p.sum())))
    return bytes(text[len(prompt):])


def train(device: str = "auto", steps: int = 300, batch: int = 16, seed: int = 0,
          report_every: int = 50, samples: int = 3) -> list[float]:
    """Train, print the training and held-out losses and a few samples; return the
    training loss of every step."""
    tokens = load_text()
    split = len(tokens) * 9 // 10
    train_tokens, test_tokens = tokens[:split], tokens[split:]
    rng = np.random.default_rng(seed)
    optimizer = vmem.AdamW(lr=3e-3, weight_decay=0.01)
    # gpt2-tiny's matrices are a few hundred numbers wide: on a CPU one BLAS thread
    # is as fast as several, and far faster where other work shares the cores
    threads = threadpool_limits(1) if threadpool_limits else contextlib.nullcontext()
    with threads, vmem.Runtime(PROFILE, device=device, optimizer=optimizer,
                               seed=seed) as runtime:
        (length,) = runtime.network.input_shape
        print(f"{PROFILE}: {runtime.network.num_params():,} parameters, {len(tokens):,} bytes "
              f"of text ({', '.join(m.__name__ for m in SOURCES)}), windows of {length}; "
              f"uniform guessing scores {UNIFORM_LOSS:.2f}")
        losses = []
        for step in range(1, steps + 1):
            x, y = windows(train_tokens, rng.integers(0, split - length - 1, batch), length)
            losses.append(runtime.train_step(x, y))
            if step % report_every == 0 or step == steps:
                recent = np.mean(losses[-report_every:])
                held = held_out_loss(runtime, test_tokens, length, batch)
                print(f"step {step:4d}: training loss {recent:.3f}, held-out {held:.3f} "
                      "nats a byte")
        for _ in range(samples):
            start = int(rng.integers(0, len(test_tokens) - length))
            prompt = test_tokens[start:start + length]
            text = sample(runtime, prompt, 80, length, rng)
            shown = (bytes(prompt.tolist()) + text).decode("utf-8", "replace")
            print("---", shown.replace("\n", "\n    "), sep="\n    ")
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train(args.device, args.steps, args.batch, args.seed)


if __name__ == "__main__":
    main()
