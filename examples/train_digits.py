"""Train a small CNN on scikit-learn's handwritten digits through vmem.Runtime.

    python examples/train_digits.py [--device auto|cpu|cuda] [--epochs 15] [--optimizer adamw]

Real data (1,797 8×8 images that ship with scikit-learn, no download), a
held-out test split, and the test accuracy printed at the end.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import vmem


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # (N, 1, 8, 8) in [0, 1]
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target)
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, (x_test - mean) / std, y_train, y_test


OPTIMIZERS = {
    "sgd": vmem.SGD(lr=0.03, momentum=0.9, weight_decay=1e-4),
    "adamw": vmem.AdamW(lr=0.003, weight_decay=1e-4),
}


def train(device: str = "auto", epochs: int = 15, batch: int = 32, seed: int = 0,
          optimizer: str = "sgd") -> float:
    """Train the `digits` profile and return its accuracy on the test split."""
    x_train, x_test, y_train, y_test = load_data(seed)
    rng = np.random.default_rng(seed)
    with vmem.Runtime("digits", device=device, optimizer=OPTIMIZERS[optimizer],
                      seed=seed) as runtime:
        for epoch in range(epochs):
            order = rng.permutation(len(x_train))
            losses = []
            for start in range(0, len(order) - batch + 1, batch):
                chosen = order[start:start + batch]
                losses.append(runtime.train_step(x_train[chosen], y_train[chosen]))
            print(f"epoch {epoch + 1:2d}: mean loss {np.mean(losses):.4f}")
        probabilities = runtime.evaluate(x_test)
    return float((probabilities.argmax(axis=1) == y_test).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    args = parser.parse_args()
    accuracy = train(args.device, args.epochs, seed=args.seed, optimizer=args.optimizer)
    print(f"test accuracy: {accuracy:.4f}")


if __name__ == "__main__":
    main()
